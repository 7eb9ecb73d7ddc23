// The Function App: Flex Consumption (Linux), the `custom` runtime (our `handler` binary), one user-assigned
// identity for everything, and every app setting the handler reads in Azure.
//
// tools/deploy_checks cross-checks `appSettings` below against `handler settings` (config::SETTINGS) and the
// `connection` of every functions/*/function.json; bicep/settings-allowlist.json lists the handler settings
// deliberately left to their defaults here, each with its reason.
param name string
param planName string
param location string
param tags object
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerUrl string
param appInsightsConnectionString string
param keyVaultUri string
param keyVaultName string
param cursorKeySecretName string
param serviceBusNamespaceFqdn string
param outboxTopicName string
param sqlServerFqdn string
param sqlDatabaseName string
param authAuthority string
param authAudiences array
param authAllowedTenants array
param authPlatformDirectories array
param corsAllowedOrigins array
param logFilter string
param instanceMemoryMB int
param maximumInstanceCount int
param httpPerInstanceConcurrency int
param alwaysReadyInstances int

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

// The handler reaches SQL as the identity: no secret in the connection string (store/mssql/connection.rs).
var sqlConnectionString = 'Server=tcp:${sqlServerFqdn},1433;Database=${sqlDatabaseName};Authentication=Active Directory Managed Identity;User Id=${identityClientId};Encrypt=true'

var appSettings = {
  // The Functions host: identity-based storage, Application Insights with Entra authentication.
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // The IntegrationEvents trigger (function.json `connection: ServiceBusConnection`), identity-based.
  ServiceBusConnection__fullyQualifiedNamespace: serviceBusNamespaceFqdn
  ServiceBusConnection__credential: 'managedidentity'
  ServiceBusConnection__clientId: identityClientId
  // azure_identity's ManagedIdentityCredential and the Key Vault client pick the user-assigned identity.
  AZURE_CLIENT_ID: identityClientId
  METERLINE_MANAGED_IDENTITY_CLIENT_ID: identityClientId
  // Secrets the handler reads itself (none needed by default: SQL and Service Bus use the identity, the cursor
  // key is a Key Vault reference below); the vault is named so a rotated `*_SECRET_NAME` secret can be added.
  METERLINE_KEYVAULT_URL: keyVaultUri
  // The handler.
  METERLINE_STORE: 'mssql'
  METERLINE_MSSQL_CONNECTION_STRING: sqlConnectionString
  METERLINE_AUTO_MIGRATE: 'false'
  METERLINE_LOG: logFilter
  METERLINE_LOG_FORMAT: 'json'
  METERLINE_SHUTDOWN_TIMEOUT_SECS: '10'
  METERLINE_AUTH_MODE: 'entra'
  METERLINE_AUTH_AUTHORITY: authAuthority
  METERLINE_AUTH_AUDIENCES: join(authAudiences, ',')
  METERLINE_AUTH_ALLOWED_TENANTS: join(authAllowedTenants, ',')
  METERLINE_AUTH_PLATFORM_DIRECTORIES: join(authPlatformDirectories, ',')
  METERLINE_CORS_ALLOWED_ORIGINS: join(corsAllowedOrigins, ',')
  METERLINE_CURSOR_KEY: '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=${cursorKeySecretName})'
  // The outbox publisher sends to the topic with the identity (Azure Service Bus Data Sender on the topic).
  METERLINE_SERVICEBUS_NAMESPACE: serviceBusNamespaceFqdn
  METERLINE_OUTBOX_TOPIC: outboxTopicName
  METERLINE_TELEMETRY: 'auto'
  OTEL_SERVICE_NAME: 'meterline'
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Key Vault references (METERLINE_CURSOR_KEY) resolve with this identity.
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        // main.bicep's descriptions give the measurements behind the defaults (BENCHMARKS.md).
        alwaysReady: alwaysReadyInstances == 0 ? [] : [
          {
            name: 'http'
            instanceCount: alwaysReadyInstances
          }
        ]
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
  }
}

resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: appSettings
}

output id string = site.id
output name string = site.name
output defaultHostName string = site.properties.defaultHostName
