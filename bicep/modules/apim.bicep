// Optional API Management in front of the Function App (main.bicep: deployApim, off by default).
// An outer shield only: it rejects requests without a valid Entra token and throttles per calling client
// coarsely; the handler still authenticates every request and enforces each plan's exact limits.
// It cannot be bypassed: apim-lock.bicep lets only this instance's addresses reach the Function App, so the
// backend needs no function key (the HTTP functions are anonymous; the handler authenticates every call) and no
// host key is read into the template at deploy time.
param name string
param location string
param tags object
param publisherEmail string
param functionAppName string
param functionAppHostName string
param authAuthority string
param authAudiences array
param callsPerMinute int

@description('API Management tier. rate-limit-by-key is not available on Consumption, so the smallest fitting tier is Basic v2.')
@allowed([
  'BasicV2'
  'StandardV2'
  'Developer'
  'Basic'
  'Standard'
])
param skuName string = 'BasicV2'

resource service 'Microsoft.ApiManagement/service@2023-05-01-preview' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: skuName
    capacity: 1
  }
  properties: {
    publisherEmail: publisherEmail
    publisherName: 'Meterline'
  }
}

resource backend 'Microsoft.ApiManagement/service/backends@2023-05-01-preview' = {
  parent: service
  name: 'meterline-functions'
  properties: {
    protocol: 'http'
    url: 'https://${functionAppHostName}/api'
  }
}

resource api 'Microsoft.ApiManagement/service/apis@2023-05-01-preview' = {
  parent: service
  name: 'meterline'
  properties: {
    displayName: 'Meterline'
    path: 'api'
    protocols: [
      'https'
    ]
    subscriptionRequired: false
    serviceUrl: 'https://${functionAppHostName}/api'
  }
}

resource catchAll 'Microsoft.ApiManagement/service/apis/operations@2023-05-01-preview' = [for method in [
  'GET'
  'POST'
  'PUT'
  'PATCH'
  'DELETE'
  'HEAD'
  'OPTIONS'
]: {
  parent: api
  name: 'all-${toLower(method)}'
  properties: {
    displayName: '${method} /*'
    method: method
    urlTemplate: '/*'
  }
}]

// The Entra tenant id is the path segment after the authority host (https://login.microsoftonline.com/<tenant>/v2.0).
var tenantSegment = split(replace(authAuthority, 'https://', ''), '/')[1]
var audienceElements = join(map(authAudiences, a => '<audience>${a}</audience>'), '')

var policy = '''
<policies>
  <inbound>
    <base />
    <choose>
      <!-- A browser's CORS preflight carries no token: the handler answers it (METERLINE_CORS_ALLOWED_ORIGINS) without authenticating or metering anything. -->
      <when condition="@(context.Request.Method == &quot;OPTIONS&quot; &amp;&amp; context.Request.Headers.ContainsKey(&quot;Access-Control-Request-Method&quot;))">
        <rate-limit-by-key calls="CALLS" renewal-period="60" counter-key="@(context.Request.IpAddress)" />
      </when>
      <otherwise>
        <validate-azure-ad-token tenant-id="TENANT" header-name="Authorization" failed-validation-httpcode="401" failed-validation-error-message="invalid or missing bearer token">
          <audiences>AUDIENCES</audiences>
        </validate-azure-ad-token>
        <rate-limit-by-key calls="CALLS" renewal-period="60" counter-key="@(context.Request.Headers.GetValueOrDefault(&quot;Authorization&quot;,&quot;&quot;).AsJwt()?.Claims.GetValueOrDefault(&quot;azp&quot;, context.Request.IpAddress))" increment-condition="@(true)" />
      </otherwise>
    </choose>
    <set-backend-service backend-id="meterline-functions" />
  </inbound>
  <backend>
    <base />
  </backend>
  <outbound>
    <base />
  </outbound>
  <on-error>
    <base />
  </on-error>
</policies>
'''

resource apiPolicy 'Microsoft.ApiManagement/service/apis/policies@2023-05-01-preview' = {
  parent: api
  name: 'policy'
  properties: {
    format: 'rawxml'
    value: replace(replace(replace(policy, 'TENANT', tenantSegment), 'AUDIENCES', audienceElements), 'CALLS', string(callsPerMinute))
  }
  dependsOn: [
    backend
  ]
}

// Readiness through the gateway without a token (the deployment's smoke test polls it): this operation's policy
// has no <base />, so the API's token validation does not apply; it is rate-limited per caller address instead.
resource ready 'Microsoft.ApiManagement/service/apis/operations@2023-05-01-preview' = {
  parent: api
  name: 'get-health-ready'
  properties: {
    displayName: 'GET /health/ready'
    method: 'GET'
    urlTemplate: '/health/ready'
  }
}

resource readyPolicy 'Microsoft.ApiManagement/service/apis/operations/policies@2023-05-01-preview' = {
  parent: ready
  name: 'policy'
  properties: {
    format: 'rawxml'
    value: '<policies><inbound><rate-limit-by-key calls="60" renewal-period="60" counter-key="@(context.Request.IpAddress)" /><set-backend-service backend-id="meterline-functions" /></inbound><backend><forward-request /></backend><outbound /><on-error /></policies>'
  }
  dependsOn: [
    backend
  ]
}

output gatewayUrl string = service.properties.gatewayUrl
// The addresses the Function App lets in (apim-lock.bicep): the classic tiers' public addresses, and the v2
// tiers' outbound ones.
output addresses array = union(service.properties.?publicIPAddresses ?? [], service.properties.?outboundPublicIPAddresses ?? [])
