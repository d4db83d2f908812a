/*
 * test_cgroup.c - the cgroup limits behind the default thread count and the start-up memory
 * check (engine/cgroup.c): CPU quota and memory limit read from fake /proc/self/{cgroup,
 * mountinfo} and cgroup trees laid out as Docker, Kubernetes and systemd leave them (v2 with
 * and without a cgroup namespace, v1 with cpu and cpuacct co-mounted, hybrid with the
 * controllers on v1, a parent's limit binding a child, escaped mount points, malformed files),
 * and the rounding rule.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core.h"

static char g_root[256];

/* Writes root+path (creating its directories) with the given text. */
static void put(const char *path, const char *text) {
    char full[1024];
    snprintf(full, sizeof full, "%s%s", g_root, path);
    for (char *p = full + strlen(g_root) + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            mkdir(full, 0755);
            *p = '/';
        }
    FILE *f = fopen(full, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state) {
    (void)state;
    snprintf(g_root, sizeof g_root, "/tmp/qv-cpus-XXXXXX");
    assert_non_null(mkdtemp(g_root));
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    assert_int_equal(system(cmd), 0);
    return 0;
}

#define MI_V2 "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw\n"

/* Docker with a cgroup namespace (the default on cgroup v2): the group is "/", the container's
 * own directory is the mount's root. `docker run --cpus 2.5` -> 250000 100000. */
static void test_v2_namespace(void **state) {
    (void)state;
    put("/proc/self/mountinfo", "22 1 0:21 / /proc rw - proc proc rw\n" MI_V2);
    put("/proc/self/cgroup", "0::/\n");
    put("/sys/fs/cgroup/cpu.max", "250000 100000\n");
    assert_true(qv_cgroup_cpu_limit(g_root) == 2.5);
    assert_int_equal(qv_cpus_from(64, qv_cgroup_cpu_limit(g_root)), 2);
    put("/sys/fs/cgroup/cpu.max", "max 100000\n");
    assert_true(qv_cgroup_cpu_limit(g_root) == 0);
    assert_int_equal(qv_cpus_from(64, qv_cgroup_cpu_limit(g_root)), 64);
}

/* A Kubernetes pod without a cgroup namespace: the process's group is a leaf under the pod's
 * group; the pod's limit (on the parent) binds even though the leaf says max. */
static void test_v2_parent_binds(void **state) {
    (void)state;
    put("/proc/self/mountinfo", MI_V2);
    put("/proc/self/cgroup", "0::/kubepods.slice/pod1/cri-abc\n");
    put("/sys/fs/cgroup/cpu.max", "max 100000\n"); /* the root has none */
    put("/sys/fs/cgroup/kubepods.slice/cpu.max", "max 100000\n");
    put("/sys/fs/cgroup/kubepods.slice/pod1/cpu.max", "400000 100000\n");
    put("/sys/fs/cgroup/kubepods.slice/pod1/cri-abc/cpu.max", "max 100000\n");
    assert_true(qv_cgroup_cpu_limit(g_root) == 4.0);
    /* a tighter child wins over its parent */
    put("/sys/fs/cgroup/kubepods.slice/pod1/cri-abc/cpu.max", "150000 100000\n");
    assert_true(qv_cgroup_cpu_limit(g_root) == 1.5);
    assert_int_equal(qv_cpus_from(8, 1.5), 1);
    /* a sibling's limit is not ours */
    put("/sys/fs/cgroup/kubepods.slice/pod1/cri-abc/cpu.max", "max 100000\n");
    put("/sys/fs/cgroup/kubepods.slice/pod2/cpu.max", "100000 100000\n");
    assert_true(qv_cgroup_cpu_limit(g_root) == 4.0);
}

/* cgroup v1 with cpu and cpuacct mounted together (Docker on older hosts), the group shown
 * from the host: quota / period on the group's directory. */
static void test_v1(void **state) {
    (void)state;
    put("/proc/self/mountinfo",
        "31 23 0:28 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
        "33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
        "34 31 0:31 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset\n");
    put("/proc/self/cgroup",
        "5:cpuset:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/x\n");
    put("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    put("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    put("/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n");
    put("/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
    assert_true(qv_cgroup_cpu_limit(g_root) == 3.0);
    put("/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n");
    assert_true(qv_cgroup_cpu_limit(g_root) == 0);
}

/* v1 inside the container (the mount shows only the container's group: its root field is the
 * group's path, and /proc/self/cgroup names that same path). */
static void test_v1_mount_root(void **state) {
    (void)state;
    put("/proc/self/mountinfo",
        "40 31 0:30 /docker/abc /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpuacct,cpu\n");
    put("/proc/self/cgroup", "4:cpuacct,cpu:/docker/abc\n");
    put("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "50000\n");
    put("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
    assert_true(qv_cgroup_cpu_limit(g_root) == 0.5);
    assert_int_equal(qv_cpus_from(16, 0.5), 1); /* at least one */
}

/* Hybrid (systemd's default before v2): a cgroup2 mount without the cpu controller, the cpu
 * controller on v1; both are read and the one that sets a quota counts. A "cpu" word that is
 * a prefix (cpuset) does not select a mount. */
static void test_hybrid(void **state) {
    (void)state;
    put("/proc/self/mountinfo", "34 31 0:31 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n"
                                "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
                                "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n");
    put("/proc/self/cgroup", "3:cpuset:/\n1:cpu:/svc\n0::/svc\n");
    put("/sys/fs/cgroup/cpuset/svc/cpu.cfs_quota_us", "100000\n"); /* never read */
    put("/sys/fs/cgroup/cpuset/svc/cpu.cfs_period_us", "100000\n");
    put("/sys/fs/cgroup/cpu/svc/cpu.cfs_quota_us", "800000\n");
    put("/sys/fs/cgroup/cpu/svc/cpu.cfs_period_us", "100000\n");
    assert_true(qv_cgroup_cpu_limit(g_root) == 8.0);
    put("/sys/fs/cgroup/unified/svc/cpu.max", "600000 100000\n"); /* both set: the smaller */
    assert_true(qv_cgroup_cpu_limit(g_root) == 6.0);
}

/* A mount point with a space (mountinfo writes it as \040). */
static void test_escaped_mount(void **state) {
    (void)state;
    put("/proc/self/mountinfo", "30 23 0:26 / /sys/fs/cg\\040two rw - cgroup2 cgroup2 rw\n");
    put("/proc/self/cgroup", "0::/a\n");
    put("/sys/fs/cg two/a/cpu.max", "200000 100000\n");
    assert_true(qv_cgroup_cpu_limit(g_root) == 2.0);
}

/* Nothing there, or nonsense: no limit, never a crash. */
static void test_missing_and_malformed(void **state) {
    (void)state;
    assert_true(qv_cgroup_cpu_limit(g_root) == 0); /* no /proc at all */
    put("/proc/self/mountinfo", MI_V2 "garbage line without separator\n");
    put("/proc/self/cgroup", "nonsense\n0::/\n");
    assert_true(qv_cgroup_cpu_limit(g_root) == 0); /* no cpu.max */
    const char *bad[] = {"",        "abc 100000\n", "100000 0\n", "-5 100000\n", "12x 100000\n",
                         "100000\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        put("/sys/fs/cgroup/cpu.max", bad[i]);
        assert_true(qv_cgroup_cpu_limit(g_root) == 0);
    }
}

/* Memory: v2 memory.max ("max" or bytes) with a parent binding, v1 memory.limit_in_bytes
 * (its "unlimited" is the largest page-aligned long long), on the memory controller's mount,
 * not the cpu one. */
static void test_memory(void **state) {
    (void)state;
    put("/proc/self/mountinfo", MI_V2);
    put("/proc/self/cgroup", "0::/pod/c1\n");
    put("/sys/fs/cgroup/pod/memory.max", "4294967296\n");
    put("/sys/fs/cgroup/pod/c1/memory.max", "max\n");
    assert_true(qv_cgroup_memory_limit(g_root) == 4294967296ull);
    put("/sys/fs/cgroup/pod/c1/memory.max", "1073741824\n");
    assert_true(qv_cgroup_memory_limit(g_root) == 1073741824ull);
    assert_true(qv_cgroup_cpu_limit(g_root) == 0); /* memory files say nothing of CPUs */
    put("/sys/fs/cgroup/pod/c1/memory.max", "lots\n");
    assert_true(qv_cgroup_memory_limit(g_root) == 4294967296ull);

    put("/proc/self/mountinfo",
        "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n");
    put("/proc/self/cgroup", "5:memory:/docker/m\n1:cpu:/docker/c\n");
    put("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
    put("/sys/fs/cgroup/memory/docker/m/memory.limit_in_bytes", "9223372036854771712\n");
    assert_true(qv_cgroup_memory_limit(g_root) == 0);
    put("/sys/fs/cgroup/memory/docker/m/memory.limit_in_bytes", "536870912\n");
    put("/sys/fs/cgroup/cpu/docker/m/memory.limit_in_bytes", "1024\n"); /* wrong mount */
    assert_true(qv_cgroup_memory_limit(g_root) == 536870912ull);
}

static void test_rounding(void **state) {
    (void)state;
    assert_int_equal(qv_cpus_from(8, 0), 8);
    assert_int_equal(qv_cpus_from(8, 7.999), 7);
    assert_int_equal(qv_cpus_from(8, 3.0), 3);
    assert_int_equal(qv_cpus_from(8, 12.0), 8); /* the affinity mask is tighter */
    assert_int_equal(qv_cpus_from(0, 0), 1);
    assert_int_equal(qv_cpus_from(4, 0.01), 1);
}

/* The real machine: a count in [1, online], and an account of it. */
static void test_this_machine(void **state) {
    (void)state;
    char why[160] = "";
    const int n = qv_cpus_available(why, sizeof why);
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    assert_true(n >= 1 && n <= online);
    assert_non_null(strstr(why, "online"));
    print_message("this machine: %d CPUs (%s)\n", n, why);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_v2_namespace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_parent_binds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_mount_root, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hybrid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escaped_mount, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_and_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory, setup, teardown),
        cmocka_unit_test(test_rounding),
        cmocka_unit_test(test_this_machine),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
