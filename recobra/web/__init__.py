"""Recobra's HTTP service: the API, customers' hosted endpoints, provider webhooks."""
