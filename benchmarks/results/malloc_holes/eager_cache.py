# What building a model leaves in JAX caches: python eager_cache.py efficientnetb0 224 x
import os, sys, gc, ctypes
exec(open(__import__("os").path.join(__import__("os").path.dirname(__file__), "stages.py")).read().split('rep("start")')[0])
import kft, jax
from jax._src import dispatch, pjit
rep("import kft")
model = kft.build_classifier(sys.argv[1], 10, weights=None, input_shape=(int(sys.argv[2]),)*2 + (3,))
gc.collect(); libc.malloc_trim(0); rep("built")
print(dispatch.xla_primitive_callable.cache_info())
dispatch.xla_primitive_callable.cache_clear(); gc.collect(); libc.malloc_trim(0); rep("prim cache cleared")
if len(sys.argv) > 3:
    pjit._cpp_pjit_cache_fun_only.clear(); gc.collect(); libc.malloc_trim(0); rep("fun_only cleared")
jax.clear_caches(); gc.collect(); libc.malloc_trim(0); rep("all cleared")
