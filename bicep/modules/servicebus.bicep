// Service Bus: the queue the IntegrationEvents function consumes and the topic the outbox publisher sends to.
// Local (SAS) authentication is off; the app identity receives from the queue and sends to the topic only.
param name string
param location string
param tags object
param principalId string
param integrationQueueName string
param outboxTopicName string

@description('Deliveries before Service Bus dead-letters a message the handler keeps failing.')
param maxDeliveryCount int = 10

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: name
  location: location
  tags: tags
  sku: {
    // Topics need Standard.
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
  }
}

resource integrationQueue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: namespace
  name: integrationQueueName
  properties: {
    lockDuration: 'PT1M'
    maxDeliveryCount: maxDeliveryCount
    deadLetteringOnMessageExpiration: true
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
  }
}

resource outboxTopic 'Microsoft.ServiceBus/namespaces/topics@2022-10-01-preview' = {
  parent: namespace
  name: outboxTopicName
  properties: {
    // The outbox sends each event with its id as MessageId: a resend after a lost acknowledgement is dropped.
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT1H'
    defaultMessageTimeToLive: 'P14D'
  }
}

var dataReceiverRoleId = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
var dataSenderRoleId = '69a216fc-b8fb-44d8-bc22-1f3c2552ae39'

// Azure Service Bus Data Receiver on the integration queue only.
resource queueReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(integrationQueue.id, principalId, dataReceiverRoleId)
  scope: integrationQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataReceiverRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Azure Service Bus Data Sender on the outbox topic only.
resource topicSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(outboxTopic.id, principalId, dataSenderRoleId)
  scope: outboxTopic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataSenderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output namespaceId string = namespace.id
output namespaceFqdn string = '${namespace.name}.servicebus.windows.net'
