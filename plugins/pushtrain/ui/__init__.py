"""pushtrain in the Airflow UI: pipeline and registry pages, and the signed git webhook.

``app`` is the FastAPI app that ``plugins/pushtrain_plugin.py`` mounts at ``/pushtrain`` in the API server;
``records`` reads what the pages show, ``pages`` and ``svg`` render it, ``webhook`` verifies push events and
``starter`` starts ``train_on_push`` for them.
"""
