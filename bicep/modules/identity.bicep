// The user-assigned managed identity the Function App runs as: storage, Key Vault, Service Bus and SQL all
// authenticate this identity, and nothing else.
param name string
param location string
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
