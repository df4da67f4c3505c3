"""Retraining triggers: Alertmanager alerts in, signed webhooks (Standard Webhooks) out, via a durable outbox."""
