"""Pod template overrides: a strategic-merge-like deep merge of the user's podTemplate over the rendered one."""

from __future__ import annotations

import copy
from typing import Any

# Lists of objects merged by this key (as the strategic merge patch does for pods); other lists are replaced.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "tolerations": "key",
}


def merge(base: Any, override: Any, key: str | None = None) -> Any:
    """`override` merged into a copy of `base`: dicts recursively, named lists item by item, the rest replaced.

    A `null` in the override removes the key, as in a merge patch.
    """
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for k, v in override.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    merge_key = MERGE_KEYS.get(key or "")
    if isinstance(base, list) and isinstance(override, list) and merge_key:
        out_list = copy.deepcopy(base)
        for item in override:
            if not isinstance(item, dict) or merge_key not in item:
                out_list.append(copy.deepcopy(item))
                continue
            for i, existing in enumerate(out_list):
                if isinstance(existing, dict) and existing.get(merge_key) == item[merge_key]:
                    out_list[i] = merge(existing, item)
                    break
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(override)
