// The alerts of docs/operations.md ("Alerts"; tools/deploy_checks requires a runbook entry for each rule), on
// Application Insights data: requests (the Functions host records every invocation) and the handler's
// OpenTelemetry metrics (customMetrics; names from handler/src/telemetry/metrics.rs), plus Service Bus dead
// letters as a second quarantine signal. They go to the action group of alertEmails and to actionGroupId.
param baseName string
param location string
param tags object
param appInsightsId string
param functionAppId string
param serviceBusNamespaceId string
param integrationQueueName string
param alertEmails array
@description('An existing action group (resource id) that receives every alert too; empty for none.')
param actionGroupId string
param fiveXxRateThreshold string
param p95LatencyMs int
param quotaThresholdEvents int
param rollupLagSeconds int
param quarantineCount int
param outboxBacklog int

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmails)) {
  name: 'ag-${baseName}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: take('mtr${baseName}', 12)
    enabled: true
    emailReceivers: [for (email, i) in alertEmails: {
      name: 'email-${i}'
      emailAddress: email
      useCommonAlertSchema: true
    }]
  }
}

var actions = concat(empty(alertEmails) ? [] : [
  actionGroup.id
], empty(actionGroupId) ? [] : [
  actionGroupId
])

var rules = [
  {
    name: 'handler-5xx-rate'
    severity: 1
    description: 'More than ${fiveXxRateThreshold} of API requests failed with 5xx over 15 minutes (docs/operations.md#handler-5xx-rate).'
    query: 'requests | where cloud_RoleName has "func-${baseName}" | summarize total = count(), failed = countif(toint(resultCode) >= 500 and toint(resultCode) != 501) | where total >= 20 | extend rate = todouble(failed) / total'
    measure: 'rate'
    aggregation: 'Maximum'
    threshold: json(fiveXxRateThreshold)
  }
  {
    name: 'p95-latency'
    severity: 2
    description: 'The 95th percentile of API request durations exceeded ${p95LatencyMs} ms over 15 minutes (docs/operations.md#p95-latency).'
    query: 'requests | where cloud_RoleName has "func-${baseName}" | summarize total = count(), p95 = percentile(duration, 95) | where total >= 20'
    measure: 'p95'
    aggregation: 'Maximum'
    threshold: p95LatencyMs
  }
  {
    name: 'breaker-open'
    severity: 1
    description: 'A dependency circuit breaker (store, servicebus, keyvault, openid) was open in the last 15 minutes (docs/operations.md#breaker-open).'
    query: 'customMetrics | where name == "meterline.breaker.state" | summarize state = max(value)'
    measure: 'state'
    aggregation: 'Maximum'
    // 0 closed, 1 half-open, 2 open.
    threshold: 1
  }
  {
    name: 'quota-threshold-events'
    severity: 3
    description: 'More than ${quotaThresholdEvents} quota threshold events (a tenant reached 80 % or 100 % of its quota) were published in 15 minutes (docs/operations.md#quota-threshold-events).'
    query: 'customMetrics | where name == "meterline.outbox.published" and tostring(customDimensions.type) == "meterline.quota.threshold-crossed.v1" | summarize crossed = sum(valueSum)'
    measure: 'crossed'
    aggregation: 'Total'
    threshold: quotaThresholdEvents
  }
  {
    name: 'rollup-lag'
    severity: 2
    description: 'The usage rollup is more than ${rollupLagSeconds} s behind (docs/operations.md#rollup-lag).'
    query: 'customMetrics | where name == "meterline.rollup.lag" | summarize lag = max(value)'
    measure: 'lag'
    aggregation: 'Maximum'
    threshold: rollupLagSeconds
  }
  {
    name: 'quarantine-count'
    severity: 2
    description: 'More than ${quarantineCount} integration messages were quarantined in 15 minutes (docs/operations.md#quarantine-count).'
    query: 'customMetrics | where name == "meterline.consumer.outcomes" and tostring(customDimensions.outcome) == "quarantined" | summarize quarantined = sum(valueSum)'
    measure: 'quarantined'
    aggregation: 'Total'
    threshold: quarantineCount
  }
  {
    name: 'outbox-backlog'
    severity: 2
    description: 'More than ${outboxBacklog} outbox events wait to be published (docs/operations.md#outbox-backlog).'
    query: 'customMetrics | where name == "meterline.outbox.backlog" | summarize backlog = max(value)'
    measure: 'backlog'
    aggregation: 'Maximum'
    threshold: outboxBacklog
  }
]

resource logAlerts 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = [for rule in rules: {
  name: '${baseName}-${rule.name}'
  location: location
  tags: tags
  properties: {
    displayName: '${baseName}: ${rule.name}'
    description: rule.description
    severity: rule.severity
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: rule.query
          metricMeasureColumn: rule.measure
          timeAggregation: rule.aggregation
          operator: 'GreaterThan'
          threshold: rule.threshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actions
    }
  }
}]

// Messages Service Bus gave up on (maxDeliveryCount) land in the queue's dead-letter queue.
resource deadLetters 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${baseName}-integration-dead-letters'
  location: 'global'
  tags: tags
  properties: {
    description: 'Messages in the ${integrationQueueName} dead-letter queue (docs/operations.md#quarantine-count).'
    severity: 2
    enabled: true
    scopes: [
      serviceBusNamespaceId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'dead-lettered'
          metricName: 'DeadletteredMessages'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                integrationQueueName
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    actions: [for id in actions: {
      actionGroupId: id
    }]
  }
}

// Keeps the function app id in the template's outputs for dashboards that link alerts to the app.
output functionAppId string = functionAppId
