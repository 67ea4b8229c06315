// FASTSEG_CLONES: compile a hot loop three times (AVX-512, AVX2, baseline x86-64) and pick the best at
// load time (GCC target_clones), so one wheel runs everywhere and vectorises as wide as the CPU allows.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTSEG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTSEG_CLONES
#endif
