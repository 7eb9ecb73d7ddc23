// Meterline: every Azure resource of one environment, deployed into one resource group.
//
//   az deployment group create -g <rg> -f bicep/main.bicep -p bicep/parameters/<env>.json
//
// The Function App (Flex Consumption, Linux, custom handler) runs as one user-assigned managed identity. That
// identity gets exactly the roles it needs, each scoped to the single resource (or entity) it needs it on; no
// connection string with a key is stored anywhere. docs/operations.md is the runbook.
targetScope = 'resourceGroup'

@description('Environment name: dev, test or prod. Part of every resource name.')
@allowed([
  'dev'
  'test'
  'prod'
])
param environmentName string

@description('Azure region of every resource (must offer Flex Consumption).')
param location string = resourceGroup().location

@description('Short prefix of resource names (letters and digits).')
@minLength(2)
@maxLength(10)
param namePrefix string = 'meterline'

@description('Tags added to every resource.')
param tags object = {}

// --- identity (tokens the API accepts) -----------------------------------------------------------------------
@description('METERLINE_AUTH_AUTHORITY: the Entra authority whose tokens the API accepts, e.g. https://login.microsoftonline.com/<tenant-id>/v2.0.')
param authAuthority string

@description('METERLINE_AUTH_AUDIENCES: accepted audiences (the App ID URI and the API client id).')
param authAudiences array

@description('METERLINE_AUTH_ALLOWED_TENANTS: Entra directory ids whose tokens are accepted; empty accepts any registered tenant.')
param authAllowedTenants array = []

@description('METERLINE_AUTH_PLATFORM_DIRECTORIES: Entra directory ids whose tokens may hold Platform.Admin. Empty: the authority\'s own directory, which only a single-tenant authority has (a multi-tenant authority must name them, or the handler refuses to start).')
param authPlatformDirectories array = []

// --- SQL ------------------------------------------------------------------------------------------------------
@description('azureSql: create a logical server (Entra-only authentication) and a database. fabric: use an existing SQL database in Microsoft Fabric (Fabric items cannot be created from ARM; create it in the Fabric portal first).')
@allowed([
  'azureSql'
  'fabric'
])
param sqlTarget string = 'azureSql'

@description('azureSql: display name of the Entra group (or user) that administers the SQL server.')
param sqlAdminLogin string = ''

@description('azureSql: object id of that Entra group (or user).')
param sqlAdminObjectId string = ''

@description('azureSql: the administrator principal type.')
@allowed([
  'Group'
  'User'
  'Application'
])
param sqlAdminPrincipalType string = 'Group'

@description('azureSql: database SKU. The default is serverless General Purpose, 1 vCore max.')
param sqlDatabaseSku object = {
  name: 'GP_S_Gen5_1'
  tier: 'GeneralPurpose'
}

@description('azureSql: point-in-time restore window in days (1-35).')
@minValue(1)
@maxValue(35)
param sqlBackupRetentionDays int = 14

@description('fabric: the SQL connection string server of the Fabric SQL database, e.g. <id>.database.fabric.microsoft.com (Fabric portal: Settings, Connection strings).')
param fabricSqlServer string = ''

@description('fabric: the database name of the Fabric SQL database (its "Initial Catalog").')
param fabricSqlDatabase string = ''

// --- Function App ---------------------------------------------------------------------------------------------
@description('Flex Consumption instance memory in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Flex Consumption scale-out limit.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Flex Consumption: concurrent HTTP requests per instance before the platform adds one. 16 matches what was measured (BENCHMARKS.md: with 16 connections one 2-core process serves 10 000-12 000 single-row reads/s at p99 < 3 ms and 3 800 creates/s at p99 7.5 ms) and the SQL Server pool of 16 connections per process (store/mssql: past 64 waiting transactions it sheds with 503 overloaded), so a request in flight normally holds a connection instead of queueing for one.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 16

@description('Flex Consumption: instances kept warm for HTTP. The handler itself starts in 14.5 ms (BENCHMARKS.md, cold start), so what a first request waits for is the platform allocating an instance; one always-ready instance removes that for the steady trickle of traffic, and scale-out above it is on demand. 0 saves its cost (dev).')
@minValue(0)
@maxValue(20)
param alwaysReadyInstances int = 1

@description('METERLINE_CORS_ALLOWED_ORIGINS: origins whose pages may call the API from a browser, e.g. https://app.example.com; empty: none. The handler answers CORS itself, so the Function App\'s own CORS setting stays empty.')
param corsAllowedOrigins array = []

@description('METERLINE_LOG for the handler.')
param logFilter string = 'info'

@description('Name of the Key Vault secret that holds METERLINE_CURSOR_KEY (at least 32 characters). Create it before the app starts; docs/operations.md says how.')
param cursorKeySecretName string = 'meterline-cursor-key'

// --- Service Bus ----------------------------------------------------------------------------------------------
@description('Queue the IntegrationEvents function reads (functions/IntegrationEvents/function.json: queueName).')
param integrationQueueName string = 'integration-events'

@description('Topic the outbox publisher sends Meterline events to.')
param outboxTopicName string = 'meterline-outbox'

// --- API Management (optional) --------------------------------------------------------------------------------
@description('Put an API Management instance (Consumption tier) in front of the Function App.')
param deployApim bool = false

@description('API Management: publisher e-mail (required by the resource).')
param apimPublisherEmail string = 'ops@example.com'

@description('API Management: coarse per-client shield, calls per minute per token azp (the handler enforces the real plan limits).')
param apimCallsPerMinute int = 1200

// --- alerts ---------------------------------------------------------------------------------------------------
@description('E-mail addresses that receive alerts; empty creates the alert rules without an action group.')
param alertEmails array = []

@description('An existing action group (resource id) that receives every alert as well; empty for none.')
param alertActionGroupId string = ''

@description('Alert when the 95th percentile of request durations exceeds this many milliseconds over 15 minutes. BENCHMARKS.md measures p99 under 8 ms for every single-row call on SQLite (30 ms for a search); Azure SQL and the Functions host add tens of milliseconds, so 1 s means something is wrong, not slow.')
param alertP95LatencyMs int = 1000

@description('Alert when more than this many quota threshold events (80 % or 100 % of a quota) are published in 15 minutes; 0 alerts on every one (severity 3, informational).')
param alertQuotaThresholdEvents int = 0

@description('Alert when more than this share of requests (0-1) fail with 5xx over 15 minutes.')
param alert5xxRateThreshold string = '0.05'

@description('Alert when the usage rollup is further behind than this many seconds.')
param alertRollupLagSeconds int = 1800

@description('Alert when more than this many integration messages were quarantined in 15 minutes.')
param alertQuarantineCount int = 0

@description('Alert when more than this many outbox events wait to be published.')
param alertOutboxBacklog int = 1000

var suffix = uniqueString(subscription().id, resourceGroup().id, environmentName)
var baseName = '${namePrefix}-${environmentName}'
var allTags = union(tags, {
  application: 'meterline'
  environment: environmentName
})

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: 'id-${baseName}'
    location: location
    tags: allTags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    baseName: baseName
    location: location
    tags: allTags
    principalId: identity.outputs.principalId
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: take('st${namePrefix}${environmentName}${suffix}', 24)
    location: location
    tags: allTags
    principalId: identity.outputs.principalId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: take('kv-${baseName}-${suffix}', 24)
    location: location
    tags: allTags
    principalId: identity.outputs.principalId
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    name: 'sb-${baseName}-${suffix}'
    location: location
    tags: allTags
    principalId: identity.outputs.principalId
    integrationQueueName: integrationQueueName
    outboxTopicName: outboxTopicName
  }
}

module sql 'modules/sql.bicep' = if (sqlTarget == 'azureSql') {
  name: 'sql'
  params: {
    serverName: 'sql-${baseName}-${suffix}'
    databaseName: 'meterline'
    location: location
    tags: allTags
    adminLogin: sqlAdminLogin
    adminObjectId: sqlAdminObjectId
    adminPrincipalType: sqlAdminPrincipalType
    databaseSku: sqlDatabaseSku
    backupRetentionDays: sqlBackupRetentionDays
  }
}

var sqlServerFqdn = sqlTarget == 'azureSql' ? sql.outputs.serverFqdn : fabricSqlServer
var sqlDatabaseName = sqlTarget == 'azureSql' ? sql.outputs.databaseName : fabricSqlDatabase

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: 'func-${baseName}-${suffix}'
    planName: 'plan-${baseName}'
    location: location
    tags: allTags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
    keyVaultUri: keyVault.outputs.uri
    keyVaultName: keyVault.outputs.name
    cursorKeySecretName: cursorKeySecretName
    serviceBusNamespaceFqdn: serviceBus.outputs.namespaceFqdn
    outboxTopicName: outboxTopicName
    sqlServerFqdn: sqlServerFqdn
    sqlDatabaseName: sqlDatabaseName
    authAuthority: authAuthority
    authAudiences: authAudiences
    authAllowedTenants: authAllowedTenants
    authPlatformDirectories: authPlatformDirectories
    corsAllowedOrigins: corsAllowedOrigins
    logFilter: logFilter
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    alwaysReadyInstances: alwaysReadyInstances
  }
}

module apim 'modules/apim.bicep' = if (deployApim) {
  name: 'apim'
  params: {
    name: 'apim-${baseName}-${suffix}'
    location: location
    tags: allTags
    publisherEmail: apimPublisherEmail
    functionAppName: functionApp.outputs.name
    functionAppHostName: functionApp.outputs.defaultHostName
    authAuthority: authAuthority
    authAudiences: authAudiences
    callsPerMinute: apimCallsPerMinute
  }
}

// With API Management, the Function App takes API traffic from it alone (apim-lock.bicep; tools/deploy_checks).
module apimLock 'modules/apim-lock.bicep' = if (deployApim) {
  name: 'apim-lock'
  params: {
    functionAppName: functionApp.outputs.name
    apimAddresses: deployApim ? apim.outputs.addresses : []
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    baseName: baseName
    location: location
    tags: allTags
    appInsightsId: monitoring.outputs.appInsightsId
    functionAppId: functionApp.outputs.id
    serviceBusNamespaceId: serviceBus.outputs.namespaceId
    integrationQueueName: integrationQueueName
    alertEmails: alertEmails
    actionGroupId: alertActionGroupId
    fiveXxRateThreshold: alert5xxRateThreshold
    p95LatencyMs: alertP95LatencyMs
    quotaThresholdEvents: alertQuotaThresholdEvents
    rollupLagSeconds: alertRollupLagSeconds
    quarantineCount: alertQuarantineCount
    outboxBacklog: alertOutboxBacklog
  }
}

output functionAppName string = functionApp.outputs.name
output functionAppHostName string = functionApp.outputs.defaultHostName
output identityClientId string = identity.outputs.clientId
output identityPrincipalId string = identity.outputs.principalId
output identityName string = identity.outputs.name
output keyVaultName string = keyVault.outputs.name
output serviceBusNamespace string = serviceBus.outputs.namespaceFqdn
output sqlServer string = sqlServerFqdn
output sqlDatabase string = sqlDatabaseName
output apimGatewayUrl string = deployApim ? apim.outputs.gatewayUrl : ''
@description('Where clients (and the deployment\'s smoke test) reach the API: the API Management gateway when it is deployed, since the Function App then refuses direct calls.')
output apiBaseUrl string = deployApim ? '${apim.outputs.gatewayUrl}/api' : 'https://${functionApp.outputs.defaultHostName}/api'
