"""The training stages: each module is one stage's typed recipe (``@register_stage``) and its
:class:`~presto_cli.train.loop.Task` (``@register_task``), built on the library (``models/``,
``codec/``, ``text/``, ``diffusion/``, ``distill/``, ``data/``) and run by ``train/loop.py``.
``recipes.STAGE_MODULES`` lists them; no library package imports this one (tests/test_imports.py).
"""
