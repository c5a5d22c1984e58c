"""Stripe, end to end: the gateway adapter, webhooks, the import and the hosted
Payment Element (see docs/stripe.md).

``config``   settings of one account and its ``StripeClient`` (pinned API version)
``mapping``  Stripe objects -> domain objects and commands (pure)
``gateway``  the ``PaymentGateway`` (entry point ``stripe``)
``inbox``    verified webhook events, stored then processed in order
``webhooks`` ``POST /webhooks/stripe``
``importer`` ``recobra stripe import``
``hosted``   Stripe's Payment Element on the hosted update-payment page
``cli``      the ``recobra stripe`` commands
"""
