/*
 * cgroup.c - the limits a control group puts on this process: how many CPUs it may really use
 * (its affinity mask, capped by the CPU quota: a container's `--cpus`, a Kubernetes CPU
 * limit) and how much memory (a container's `--memory`).
 *
 * sysconf(_SC_NPROCESSORS_ONLN) counts the host's CPUs. In a container limited to 4 CPUs of a
 * 64-core host, a pool of 64 spinning workers that meet at a barrier after every operation
 * runs into the CFS quota in the first milliseconds of each period and waits out the rest, so
 * the default thread count must come from the limit instead. The memory limit lets the server
 * warn at start-up when its budgets cannot fit (the kernel's OOM killer would say it later).
 *
 * Limits are read where the kernel publishes them for this process: /proc/self/cgroup names
 * the process's group in each hierarchy, /proc/self/mountinfo says where that hierarchy is
 * mounted (and which part of it, inside a cgroup namespace), and the group's directory and
 * every ancestor up to the mount point is searched, since a parent's limit binds its children:
 *   cgroup v2: cpu.max, "QUOTA PERIOD" or "max PERIOD"; memory.max, bytes or "max";
 *   cgroup v1 (the cpu / memory controller's mount): cpu.cfs_quota_us (-1: none) /
 *   cpu.cfs_period_us; memory.limit_in_bytes (a value near 2^63: none).
 * The smallest limit found counts; a missing or unreadable file means none.
 * What not: no cpuset.cpus parsing (the affinity mask already reflects a cpuset), no
 * cpu.weight (shares are not a limit), no memory.high (a throttle, not a limit).
 * Thread: any; reads files, keeps no state.
 */
#define _GNU_SOURCE
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"

#define PATH_CAP 4096

/* Reads the first line of root+path into buf (NUL-terminated, newline dropped). */
static bool read_line(const char *root, const char *path, char *buf, size_t cap) {
    char full[PATH_CAP];
    if (snprintf(full, sizeof full, "%s%s", root, path) >= (int)sizeof full) return false;
    FILE *f = fopen(full, "r");
    if (!f) return false;
    const bool ok = fgets(buf, (int)cap, f) != NULL;
    fclose(f);
    if (ok) buf[strcspn(buf, "\n")] = '\0';
    return ok;
}

enum ctl { CTL_CPU, CTL_MEMORY };
static const char *const ctl_name[] = {"cpu", "memory"};

/* One group directory's limit (CPUs as quota / period, or bytes), 0 when it sets none. */
static double group_limit(const char *root, const char *dir, int v2, enum ctl ctl) {
    char path[PATH_CAP], line[128];
    if (ctl == CTL_MEMORY) {
        const char *file = v2 ? "memory.max" : "memory.limit_in_bytes";
        if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path) return 0;
        if (!read_line(root, path, line, sizeof line) || strcmp(line, "max") == 0) return 0;
        char *end;
        const unsigned long long b = strtoull(line, &end, 10);
        /* v1 says "no limit" with the largest page-aligned long long */
        if (end == line || *end != '\0' || b == 0 || b >= (1ull << 62)) return 0;
        return (double)b;
    }
    if (v2) {
        if (snprintf(path, sizeof path, "%s/cpu.max", dir) >= (int)sizeof path) return 0;
        if (!read_line(root, path, line, sizeof line)) return 0;
        char quota[32];
        long long period = 0;
        if (sscanf(line, "%31s %lld", quota, &period) != 2 || period <= 0) return 0;
        if (strcmp(quota, "max") == 0) return 0;
        char *end;
        const long long q = strtoll(quota, &end, 10);
        if (*end != '\0' || q <= 0) return 0;
        return (double)q / (double)period;
    }
    if (snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir) >= (int)sizeof path) return 0;
    if (!read_line(root, path, line, sizeof line)) return 0;
    const long long q = strtoll(line, NULL, 10);
    if (q <= 0) return 0; /* -1: no quota */
    if (snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir) >= (int)sizeof path) return 0;
    if (!read_line(root, path, line, sizeof line)) return 0;
    const long long period = strtoll(line, NULL, 10);
    return period > 0 ? (double)q / (double)period : 0;
}

/* Decodes mountinfo's octal escapes (\040 for a space, ...) in place. */
static void unescape(char *s) {
    char *w = s;
    for (const char *r = s; *r;) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
            r[3] >= '0' && r[3] <= '7') {
            *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
            r += 4;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
}

/* Whether the comma-separated list has the item. */
static bool has_item(const char *list, const char *item) {
    const size_t n = strlen(item);
    for (const char *p = list; p && *p;) {
        const char *c = strchr(p, ',');
        const size_t len = c ? (size_t)(c - p) : strlen(p);
        if (len == n && strncmp(p, item, n) == 0) return true;
        p = c ? c + 1 : NULL;
    }
    return false;
}

/* The mount of the v2 hierarchy (v2 = 1) or of v1's controller: its mount point and the part
 * of the hierarchy it shows (mountinfo fields 5 and 4). */
static bool find_mount(const char *root, int v2, enum ctl ctl, char *mnt, char *mroot) {
    char path[PATH_CAP];
    if (snprintf(path, sizeof path, "%s/proc/self/mountinfo", root) >= (int)sizeof path)
        return false;
    FILE *f = fopen(path, "r");
    if (!f) return false;
    char line[PATH_CAP];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        /* id parent maj:min root mountpoint options [optional...] - fstype source superopts */
        char *sep = strstr(line, " - ");
        if (!sep) continue;
        *sep = '\0';
        char fstype[64], source[256], superopts[1024];
        if (sscanf(sep + 3, "%63s %255s %1023s", fstype, source, superopts) != 3) continue;
        if (v2 ? strcmp(fstype, "cgroup2") != 0
               : strcmp(fstype, "cgroup") != 0 || !has_item(superopts, ctl_name[ctl]))
            continue;
        char r[PATH_CAP], m[PATH_CAP];
        if (sscanf(line, "%*s %*s %*s %4095s %4095s", r, m) != 2) continue;
        unescape(r);
        unescape(m);
        strcpy(mroot, r);
        strcpy(mnt, m);
        found = true;
    }
    fclose(f);
    return found;
}

/* The process's group in the v2 hierarchy ("0::PATH") or in the one holding v1's controller
 * ("N:cpu,cpuacct:PATH"). */
static bool find_group(const char *root, int v2, enum ctl ctl, char *group) {
    char path[PATH_CAP];
    if (snprintf(path, sizeof path, "%s/proc/self/cgroup", root) >= (int)sizeof path) return false;
    FILE *f = fopen(path, "r");
    if (!f) return false;
    char line[PATH_CAP];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c1 = '\0';
        *c2 = '\0';
        const char *ctrl = c1 + 1;
        if (v2 ? strcmp(line, "0") == 0 && *ctrl == '\0' : has_item(ctrl, ctl_name[ctl])) {
            snprintf(group, PATH_CAP, "%s", c2 + 1);
            found = true;
        }
    }
    fclose(f);
    return found;
}

/* The smallest limit over the group's directory and its ancestors within one hierarchy. */
static double hierarchy_limit(const char *root, int v2, enum ctl ctl) {
    char mnt[PATH_CAP], mroot[PATH_CAP], group[PATH_CAP];
    if (!find_mount(root, v2, ctl, mnt, mroot) || !find_group(root, v2, ctl, group)) return 0;
    /* the group relative to what the mount shows; outside it (an unusual namespace set-up),
     * only the mount point's own directory is read */
    const char *rel = "";
    const size_t rl = strcmp(mroot, "/") == 0 ? 0 : strlen(mroot);
    if (strncmp(group, mroot, rl) == 0 && (group[rl] == '/' || group[rl] == '\0')) rel = group + rl;
    char dir[PATH_CAP];
    if (snprintf(dir, sizeof dir, "%s%s", mnt, strcmp(rel, "/") == 0 ? "" : rel) >= (int)sizeof dir)
        return 0;
    const size_t base = strlen(mnt);
    double best = 0;
    for (;;) {
        const double l = group_limit(root, dir, v2, ctl);
        if (l > 0 && (best == 0 || l < best)) best = l;
        if (strlen(dir) <= base) break;
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < base) break;
        *slash = '\0';
        if (strlen(dir) < base) break;
    }
    return best;
}

/* The smaller of the v2 and v1 limits, 0 when neither sets one. */
static double cgroup_limit(const char *root, enum ctl ctl) {
    if (!root) root = "";
    const double a = hierarchy_limit(root, 1, ctl), b = hierarchy_limit(root, 0, ctl);
    if (a > 0 && b > 0) return QV_MIN(a, b);
    return a > 0 ? a : b;
}

double qv_cgroup_cpu_limit(const char *root) { return cgroup_limit(root, CTL_CPU); }

uint64_t qv_cgroup_memory_limit(const char *root) {
    return (uint64_t)cgroup_limit(root, CTL_MEMORY);
}

int qv_cpus_from(int affinity, double limit) {
    int n = affinity > 0 ? affinity : 1;
    if (limit > 0) {
        const double f = floor(limit + 1e-9);
        if (f < (double)n) n = f >= 1 ? (int)f : 1;
    }
    return n;
}

int qv_cpus_available(char *why, size_t why_len) {
    int aff = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) aff = CPU_COUNT(&set);
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (aff <= 0) aff = online > 0 ? (int)online : 1;
    const double limit = qv_cgroup_cpu_limit(NULL);
    const int n = qv_cpus_from(aff, limit);
    if (why && why_len) {
        if (limit > 0)
            snprintf(why, why_len, "%d usable of %ld online, cgroup CPU limit %.2f", aff, online,
                     limit);
        else
            snprintf(why, why_len, "%d usable of %ld online, no cgroup CPU limit", aff, online);
    }
    return n;
}
