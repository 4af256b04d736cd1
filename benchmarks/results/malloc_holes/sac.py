# Prototype: a free "sacrificial" heap chunk created after each long compile.
import ctypes, os
from jax import monitoring
from kft import _compat, _config
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p; libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SAC = int(os.environ.get("SAC_MIB", "256")) * 2**20
fences = []
event_name = _compat.backend_compile_event()
def listener(event, duration, **kw):
    if event == event_name and duration >= 1.0:
        block = libc.malloc(SAC); fences.append(libc.malloc(64)); libc.free(block)
monitoring.register_event_duration_secs_listener(listener)
