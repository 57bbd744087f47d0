"""Example jobs, as in pulsar-queue\x27s tutorial."""
