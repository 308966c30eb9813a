"""Stream workers: messages from Redis Streams or NATS JetStream, scored through the router in micro-batches,
results written once to a sink; at least once in, one result per message id out."""
