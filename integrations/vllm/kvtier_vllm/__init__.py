"""kvtier's vLLM connector: `kvtier_vllm.connector.KvtierConnector` (KVConnectorBase_V1) over the
ctypes binding `kvtier` (integrations/python), which loads libkvtier."""
from .config import Settings, object_bytes  # noqa: F401
