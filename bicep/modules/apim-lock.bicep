// With API Management in front (main.bicep: deployApim), the Function App accepts API traffic only from that API
// Management instance: its access restrictions allow the instance's own public addresses and deny everything
// else (403 from the App Service front end, before the Functions host or the handler see the request). The
// deployment endpoint (scm, used by the zip deploy) keeps its own rules. tools/deploy_checks fails a template
// whose APIM option leaves the Function App reachable directly.
//
// Why addresses and not the `ApiManagement` service tag: the tag covers every API Management instance in Azure,
// anyone's, so a caller with their own instance could still reach the app. The instance's addresses change only
// when the instance is re-created or changes tier or network; redeploying the infrastructure (the workflow does,
// every release) picks the new ones up (docs/operations.md, "API Management front door").
param functionAppName string
@description('The API Management instance\'s public addresses (IPv4), as apim.bicep outputs them.')
param apimAddresses array

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource web 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'web'
  properties: {
    // The site's own settings (functionapp.bicep), restated: this resource replaces the site's configuration.
    minTlsVersion: '1.2'
    ftpsState: 'Disabled'
    http20Enabled: true
    ipSecurityRestrictionsDefaultAction: 'Deny'
    ipSecurityRestrictions: [for (address, i) in apimAddresses: {
      name: 'apim-${i}'
      description: 'The Meterline API Management instance'
      action: 'Allow'
      priority: 100 + i
      ipAddress: '${address}/32'
    }]
    scmIpSecurityRestrictionsUseMain: false
    scmIpSecurityRestrictionsDefaultAction: 'Allow'
  }
}
