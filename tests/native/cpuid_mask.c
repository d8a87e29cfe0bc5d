/* An older x86 CPU's instruction set, on this one: LD_PRELOAD this library with CPUID_MASK=avx2 (no AVX-512, no
 * VNNI, no AMX) or CPUID_MASK=avx512 (AVX-512 without VNNI, bf16 or AMX), and every CPUID the process runs
 * afterwards answers without those features. ONNX Runtime's MLAS and OpenVINO's oneDNN choose their kernels from
 * CPUID, so they run their AVX2 (or AVX-512BW) INT8 kernels, VPMADDUBSW and its saturating 16-bit sums included,
 * on a CPU that has VNNI. /proc/cpuinfo is not changed.
 *
 * How: Linux's ARCH_SET_CPUID (CPUID faulting: Intel since Ivy Bridge, and virtual machines whose hypervisor
 * emulates it; /proc/cpuinfo lists "cpuid_fault") makes CPUID raise SIGSEGV; the handler runs the real CPUID with
 * faulting briefly off, clears the feature bits, writes the registers and steps over the 2-byte instruction. The
 * setting is per thread and inherited by threads created later; the constructor runs before Python starts.
 * Exit status 3 at start-up: CPUID faulting is not available here. Build: gcc -O2 -shared -fPIC -o m.so this.c */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static int without_avx512; /* 1: avx2, 0: avx512 (only VNNI, bf16, FP16 and AMX removed) */
static volatile long trapped;

static long set_cpuid(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

static void on_fault(int sig, siginfo_t *info, void *context) {
    (void)sig; (void)info;
    greg_t *regs = ((ucontext_t *)context)->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) { /* a real segmentation fault: die of it as usual */
        signal(SIGSEGV, SIG_DFL);
        return;
    }
    uint32_t leaf = (uint32_t)regs[REG_RAX], sub = (uint32_t)regs[REG_RCX], a, b, c, d;
    set_cpuid(1);
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(sub));
    set_cpuid(0);
    if (leaf == 7 && sub == 0) {
        if (without_avx512) {
            /* EBX: AVX512 F, DQ, IFMA, PF, ER, CD, BW, VL; ECX: VBMI, VBMI2, BITALG, VPOPCNTDQ; EDX: 4VNNIW, 4FMAPS,
             * VP2INTERSECT */
            b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
            c &= ~((1u << 1) | (1u << 6) | (1u << 12) | (1u << 14));
            d &= ~((1u << 2) | (1u << 3) | (1u << 8));
        }
        c &= ~(1u << 11);                                            /* AVX512_VNNI */
        d &= ~((1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));  /* AMX_BF16, AVX512_FP16, AMX_TILE, AMX_INT8 */
    } else if (leaf == 7 && sub == 1) {
        a &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23)); /* AVX_VNNI, AVX512_BF16, AMX_FP16, AVX_IFMA */
        d &= ~((1u << 4) | (1u << 5));                            /* AVX_VNNI_INT8, AVX_NE_CONVERT */
    }
    regs[REG_RAX] = a; regs[REG_RBX] = b; regs[REG_RCX] = c; regs[REG_RDX] = d;
    regs[REG_RIP] += 2;
    trapped++;
}

__attribute__((constructor)) static void mask_cpuid(void) {
    const char *wanted = getenv("CPUID_MASK");
    if (wanted == NULL || *wanted == '\0') return;
    if (strcmp(wanted, "avx2") != 0 && strcmp(wanted, "avx512") != 0) {
        fprintf(stderr, "cpuid_mask: CPUID_MASK must be avx2 or avx512, not %s\n", wanted);
        _exit(2);
    }
    without_avx512 = strcmp(wanted, "avx2") == 0;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, NULL);
    if (set_cpuid(0) != 0) {
        perror("cpuid_mask: ARCH_SET_CPUID (no CPUID faulting here)");
        _exit(3);
    }
}

/* How many CPUID instructions were answered (ctypes can read it: a hot path that runs CPUID would distort timings). */
long cpuid_mask_trapped(void) { return trapped; }
