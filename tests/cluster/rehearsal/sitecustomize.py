"""The production split, for every Python process of the simulated cluster (on PYTHONPATH there,
so Python runs it at start): model files staged in the GPU image (`ECMF_GPU_IMAGE_DIR`) can be
read only by processes of a GPU node, never by the head's or a driver's, as on a cluster whose
CPU image carries no weights. A model loaded in the wrong place fails here as it would there.

Fake nodes are told apart by the node type Ray's fake provider sets in their environment
(`RAY_NODE_TYPE_NAME`); the head and the drivers have none.
"""

import os
import sys

_ONLY_ON_GPU_NODES = os.environ.get("ECMF_GPU_IMAGE_DIR")
_GPU_NODE = os.environ.get("RAY_NODE_TYPE_NAME") == "gpu_node"


def _refuse_gpu_image_files(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if os.path.abspath(path).startswith(_ONLY_ON_GPU_NODES):
            raise PermissionError(
                f"{path}: the GPU image's model files are not on this node (pid {os.getpid()}, "
                f"not a GPU node): load this model where the GPU work runs")


if _ONLY_ON_GPU_NODES and not _GPU_NODE:
    _ONLY_ON_GPU_NODES = os.path.abspath(_ONLY_ON_GPU_NODES)
    sys.addaudithook(_refuse_gpu_image_files)
