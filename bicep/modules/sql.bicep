// Azure SQL: a logical server with Microsoft Entra-only authentication (no SQL logins, no passwords) and one
// database. The app identity becomes a database user through bicep/sql/grant-app-user.sql, run once by the
// Entra administrator after the first deployment (ARM cannot create database users).
param serverName string
param databaseName string
param location string
param tags object
param adminLogin string
param adminObjectId string
param adminPrincipalType string
param databaseSku object
param backupRetentionDays int

resource server 'Microsoft.Sql/servers@2023-08-01-preview' = {
  name: serverName
  location: location
  tags: tags
  properties: {
    minimalTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
    administrators: {
      administratorType: 'ActiveDirectory'
      azureADOnlyAuthentication: true
      login: adminLogin
      sid: adminObjectId
      tenantId: subscription().tenantId
      principalType: adminPrincipalType
    }
  }
}

// Flex Consumption without a virtual network reaches SQL from Azure's outbound addresses.
resource allowAzure 'Microsoft.Sql/servers/firewallRules@2023-08-01-preview' = {
  parent: server
  name: 'AllowAllWindowsAzureIps'
  properties: {
    startIpAddress: '0.0.0.0'
    endIpAddress: '0.0.0.0'
  }
}

resource database 'Microsoft.Sql/servers/databases@2023-08-01-preview' = {
  parent: server
  name: databaseName
  location: location
  tags: tags
  sku: databaseSku
  properties: {
    collation: 'SQL_Latin1_General_CP1_CI_AS'
    zoneRedundant: false
    requestedBackupStorageRedundancy: 'Geo'
  }
}

// Point-in-time restore window (docs/operations.md: restore from backup).
resource shortTermRetention 'Microsoft.Sql/servers/databases/backupShortTermRetentionPolicies@2023-08-01-preview' = {
  parent: database
  name: 'default'
  properties: {
    retentionDays: backupRetentionDays
  }
}

output serverFqdn string = server.properties.fullyQualifiedDomainName
output databaseName string = database.name
