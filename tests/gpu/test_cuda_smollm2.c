/*
 * test_cuda_smollm2.c - SmolLM2-135M-Instruct (Q4_1 GGUF) on the CUDA backend gives the CPU
 * backend's greedy tokens for 24 steps and logits within the bf16 tolerance, alone and in
 * mixed batches (gpu_check_model). The 98 MB file cannot travel to the lent GPU machine (64 MiB
 * limit per call), so there this test skips with that reason. Skips (77) without CUDA, without
 * a device, or without the file ($QUIVER_HOME/models or ~/.cache/quiver/models).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "gpu_util.h"
#include "test_util.h"

static char path[4096];

static void test_smollm2(void **state) {
    (void)state;
    int fails = gpu_check_model(path, 24, 5e-2);
    if (fails) fail_msg("SmolLM2: %d failures", fails);
}

int main(void) {
    gpu_require_device();
    const char *home = getenv("QUIVER_HOME");
    if (home && *home)
        snprintf(path, sizeof path, "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", home);
    else
        snprintf(path, sizeof path, "%s/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 getenv("HOME") ? getenv("HOME") : "");
    if (!qv_test_exists(path)) {
        printf("SKIP: %s not present (the 98 MB model cannot travel to the GPU machine: 64 MiB "
               "per call)\n",
               path);
        return 77;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_smollm2)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
