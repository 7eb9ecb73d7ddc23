// Log Analytics workspace and a workspace-based Application Insights component.
param baseName string
param location string
param tags object

@description('The app identity: gets Monitoring Metrics Publisher on the component, for the host\'s Entra-authenticated ingestion.')
param principalId string

@description('Days the workspace keeps data.')
param retentionInDays int = 30

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${baseName}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${baseName}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    // The handler's OpenTelemetry exporter sends with the connection string's instrumentation key, which
    // needs local authentication; the Functions host itself authenticates with the identity
    // (APPLICATIONINSIGHTS_AUTHENTICATION_STRING). ARCHITECTURE.md, Decisions: telemetry.
    DisableLocalAuth: false
  }
}

// Monitoring Metrics Publisher
var metricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, metricsPublisherRoleId)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', metricsPublisherRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output workspaceId string = workspace.id
output appInsightsId string = appInsights.id
output appInsightsConnectionString string = appInsights.properties.ConnectionString
