"""The metering pipeline: a usage event from the request that caused it to its row in the ledger.

At the API: ``meter`` (the ``/v1/execute`` middleware) and ``views`` (the batch
endpoint) validate (``validation``, ``accept``) and hand events to the
``outbox``, which spools them and sends them through Celery (``wire``,
``batch_store``). In the worker: ``recording`` prices a batch and writes it
(``ledger``) into the tables of ``models``, exactly once.
"""
