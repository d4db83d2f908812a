/*
 * test_log.c - the logger's JSON lines (qv_log_set_json): every line parses (cJSON) with time,
 * level, logger and msg; msg decodes to the message, quotes, backslashes, control characters
 * and valid UTF-8 intact, invalid UTF-8 (a stray byte, a surrogate, an overlong form, a cut
 * sequence) as U+FFFD; a message longer than the line buffer is cut, still valid JSON; the
 * level filter holds for qv_log and not for qv_log_tagged; text mode keeps its format.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "core.h"

/* Runs fn with stderr sent to a temp file; returns what it wrote (caller frees). */
static char *capture(void (*fn)(void)) {
    char path[] = "/tmp/qv-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    fn();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    long n = lseek(fd, 0, SEEK_END);
    char *buf = calloc(1, (size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(pread(fd, buf, (size_t)n, 0), n);
    close(fd);
    unlink(path);
    return buf;
}

/* The i-th line of text as a parsed JSON object (caller deletes), NULL when it does not parse. */
static cJSON *line_json(const char *text, int i) {
    const char *p = text;
    for (int k = 0; k < i && p; k++) {
        p = strchr(p, '\n');
        if (p) p++;
    }
    assert_non_null(p);
    const char *e = strchr(p, '\n');
    assert_non_null(e);
    char *line = strndup(p, (size_t)(e - p));
    cJSON *j = cJSON_Parse(line);
    free(line);
    return j;
}

static const char *str(const cJSON *j, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    assert_true(cJSON_IsString(v));
    return v->valuestring;
}

static char big[6000];

static void emit_json(void) {
    qv_log_set_json(true);
    qv_log_set_level(QV_LOG_INFO);
    qv_log(QV_LOG_INFO,
           "plain \"quoted\" back\\slash tab\there nl\nend caf\xc3\xa9 \xf0\x9f\x90\xb3");
    qv_log(QV_LOG_WARN, "stray \xff byte, surrogate \xed\xa0\x80, overlong \xc0\xaf, cut \xe2\x82");
    qv_log(QV_LOG_DEBUG, "hidden at info");
    qv_log_set_level(QV_LOG_ERROR);
    qv_log_tagged(QV_LOG_INFO, "serve", "listening on http://0.0.0.0:8000");
    qv_log_set_level(QV_LOG_INFO);
    memset(big, '"', sizeof big - 1);
    qv_log_tagged(QV_LOG_ERROR, "serve", "%s", big);
    qv_log_set_json(false);
}

static void test_json_lines(void **state) {
    (void)state;
    char *out = capture(emit_json);
    int lines = 0;
    for (const char *p = out; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 4); /* the debug line is filtered */

    cJSON *j = line_json(out, 0);
    assert_non_null(j);
    assert_string_equal(str(j, "level"), "info");
    assert_string_equal(str(j, "logger"), "quiver");
    assert_string_equal(str(j, "msg"), "plain \"quoted\" back\\slash tab\there nl\nend caf\xc3\xa9 "
                                       "\xf0\x9f\x90\xb3");
    const char *t = str(j, "time"); /* 2026-11-29T00:29:45.123Z */
    assert_int_equal(strlen(t), 24);
    assert_true(t[4] == '-' && t[10] == 'T' && t[19] == '.' && t[23] == 'Z');
    assert_int_equal(cJSON_GetArraySize(j), 4);
    cJSON_Delete(j);

    j = line_json(out, 1);
    assert_non_null(j);
    assert_string_equal(str(j, "level"), "warn");
    assert_string_equal(str(j, "msg"), "stray \xef\xbf\xbd byte, surrogate \xef\xbf\xbd\xef\xbf\xbd"
                                       "\xef\xbf\xbd, overlong \xef\xbf\xbd\xef\xbf\xbd, cut "
                                       "\xef\xbf\xbd\xef\xbf\xbd");
    cJSON_Delete(j);

    j = line_json(out, 2); /* lifecycle lines print at every level */
    assert_non_null(j);
    assert_string_equal(str(j, "logger"), "serve");
    assert_string_equal(str(j, "msg"), "listening on http://0.0.0.0:8000");
    cJSON_Delete(j);

    j = line_json(out, 3); /* 5999 quotes, each escaped: cut, still one valid object */
    assert_non_null(j);
    const char *m = str(j, "msg");
    assert_true(strlen(m) > 1000 && strlen(m) < 5999);
    assert_true(strspn(m, "\"") == strlen(m));
    cJSON_Delete(j);
    free(out);
}

static void emit_text(void) {
    qv_log(QV_LOG_WARN, "a \"text\" line");
    qv_log_tagged(QV_LOG_INFO, "serve", "stopped");
}

static void test_text_lines(void **state) {
    (void)state;
    char *out = capture(emit_text);
    assert_string_equal(out, "quiver warn: a \"text\" line\nquiver serve: stopped\n");
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_lines),
        cmocka_unit_test(test_text_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
