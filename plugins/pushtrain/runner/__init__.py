"""The training runner: pushtrain's code inside the training images.

It imports nothing from Airflow and nothing from the rest of ``pushtrain`` but the kinds table
(``pushtrain.kinds``): the image build copies this subpackage, ``pushtrain/kinds.py`` and the empty
``pushtrain/__init__.py`` alone. Heavy libraries (tensorflow, scikit-learn) are imported where they are
used, so the Airflow side can import ``pushtrain.runner.contract`` cheaply.
"""
