"""ShapesBench's research tools, outside the pod contract: scoring attention masks against the true ones
(:mod:`.masks`), the crop-miss mechanism check (:mod:`.check`), the paired pretraining study (:mod:`.study`) and its
supervised probe ceiling (:mod:`.probe_ceiling`). ``freeatm shapesbench …`` runs them; the scenes themselves are
rendered by :mod:`freeatm.runtime.shapes`, which the toy model, the ``shapes`` prompts and evaluation use too."""
