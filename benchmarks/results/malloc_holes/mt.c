// LD_PRELOAD allocation tracer (benchmarks/RESULTS.md, "Huge-page mappings"): gcc -O2 -shared -fPIC mt.c -o /tmp/mt/libmt.so
// Records malloc/calloc/realloc/free/posix_memalign/aligned_alloc/memalign with caller
// address between mt_start() and mt_stop(path) as 32-byte records (op, ptr, size, caller).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <stdio.h>
#include <unistd.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <time.h>
typedef struct { uint64_t op, ptr, size, caller; } rec;
#define CAP (1<<25)
static rec *buf; static atomic_long n; static volatile int on;
extern void *__libc_malloc(size_t); extern void __libc_free(void*); extern void *__libc_calloc(size_t,size_t);
extern void *__libc_realloc(void*,size_t); extern void *__libc_memalign(size_t,size_t);
static void lg(uint64_t op, void*p, size_t s, void*c){ if(!on) return; long i=atomic_fetch_add(&n,1); if(i<CAP){buf[i].op=op;buf[i].ptr=(uint64_t)p;buf[i].size=s;buf[i].caller=(uint64_t)c;} }
void mt_start(void){ if(!buf) buf=mmap(0,sizeof(rec)*(size_t)CAP,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE,-1,0); on=1; }
void mt_stop(const char*path){ on=0; int fd=open(path,O_WRONLY|O_CREAT|O_TRUNC,0644); long m=n<CAP?n:CAP; write(fd,buf,m*sizeof(rec)); close(fd); }
void mt_mark(uint64_t k){ lg(9,0,k,0); }
void *malloc(size_t s){ void*p=__libc_malloc(s); lg(1,p,s,__builtin_return_address(0)); return p; }
void *calloc(size_t a,size_t b){ void*p=__libc_calloc(a,b); lg(1,p,a*b,__builtin_return_address(0)); return p; }
void *realloc(void*q,size_t s){ void*p=__libc_realloc(q,s); if(q) lg(2,q,0,__builtin_return_address(0)); lg(1,p,s,__builtin_return_address(0)); return p; }
void free(void*p){ if(p) lg(2,p,0,__builtin_return_address(0)); __libc_free(p); }
int posix_memalign(void**r,size_t a,size_t s){ void*p=__libc_memalign(a,s); if(!p) return 12; *r=p; lg(3,p,s,__builtin_return_address(0)); return 0; }
void *aligned_alloc(size_t a,size_t s){ void*p=__libc_memalign(a,s); lg(3,p,s,__builtin_return_address(0)); return p; }
void *memalign(size_t a,size_t s){ void*p=__libc_memalign(a,s); lg(3,p,s,__builtin_return_address(0)); return p; }
