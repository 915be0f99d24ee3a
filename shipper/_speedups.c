/* shipper's hot path in C: the pino record fast path (shipper/parsing/pino.py's `normalize_records`,
 * event for event) and the redaction prefilter (shipper/redact.py).
 *
 * Parsing a pino line costs ~40k instructions in Python, of which the per-record dict work after
 * orjson (moving msg/hostname, the level word, the RFC 3339 timestamp, the http fields, the Event)
 * is about a third. Here that work is a few hundred instructions a record. The semantics live in
 * the Python twin (shipper/parsing/pino.py), which runs where this module was not built, and
 * tests/test_speedups.py checks that both give the same events. Anything unusual (a custom level,
 * a key collision, a time of another magnitude) is left untouched and listed as slow, for the
 * careful Python path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

static const long long EPOCH_MS_MIN = 100000000000LL;
static const long long EPOCH_MS_END = 100000000000000LL;

/* Interned keys. */
static PyObject *k_level, *k_time, *k_msg, *k_hostname, *k_level_num, *k_timestamp, *k_message, *k_host,
    *k_service, *k_source, *k_stream, *k_http, *k_req, *k_res, *k_method, *k_url, *k_status_code_in,
    *k_response_time, *k_status_code, *k_duration_ms;

/* Set once by `configure` (the Python twin's collaborators). */
static PyObject *levels, *level_from_number, *http_fields, *second_prefix, *event_type;

static int intern(PyObject **slot, const char *text) {
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *a, *b, *c, *d, *e;
    if (!PyArg_ParseTuple(args, "O!OOOO:configure", &PyDict_Type, &a, &b, &c, &d, &e))
        return NULL;
    Py_XSETREF(levels, Py_NewRef(a));
    Py_XSETREF(level_from_number, Py_NewRef(b));
    Py_XSETREF(http_fields, Py_NewRef(c));
    Py_XSETREF(second_prefix, Py_NewRef(d));
    Py_XSETREF(event_type, Py_NewRef(e));
    Py_RETURN_NONE;
}

/* `prefix` (YYYY-MM-DDTHH:MM:SS, 19 ASCII characters) + `.mmmZ`. */
static PyObject *timestamp(PyObject *prefix, long long ms) {
    Py_ssize_t size;
    const char *head = PyUnicode_AsUTF8AndSize(prefix, &size);
    if (head == NULL)
        return NULL;
    PyObject *out = PyUnicode_New(size + 5, 127);
    if (out == NULL)
        return NULL;
    char *data = (char *)PyUnicode_DATA(out);
    int frac = (int)(ms % 1000);
    memcpy(data, head, (size_t)size);
    data[size] = '.';
    data[size + 1] = (char)('0' + frac / 100);
    data[size + 2] = (char)('0' + frac / 10 % 10);
    data[size + 3] = (char)('0' + frac % 10);
    data[size + 4] = 'Z';
    return out;
}

/* A new dict {k1: v1, k2: v2}. */
static PyObject *pair(PyObject *k1, PyObject *v1, PyObject *k2, PyObject *v2) {
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    if (PyDict_SetItem(out, k1, v1) < 0 || PyDict_SetItem(out, k2, v2) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* {out1: src1[k1], out2: src2[k2]} (a new reference), or NULL: with an error set on error, without
 * when a key is missing. */
static PyObject *pair_of(PyObject *src1, PyObject *k1, PyObject *src2, PyObject *k2, PyObject *out1, PyObject *out2) {
    PyObject *first = PyDict_GetItemWithError(src1, k1);
    PyObject *second = first ? PyDict_GetItemWithError(src2, k2) : NULL;
    return second != NULL ? pair(out1, first, out2, second) : NULL;
}

/* Fastify's access fields (a new reference, Py_None when there are none, NULL on error). */
static PyObject *http_of(PyObject *record) {
    PyObject *req = PyDict_GetItemWithError(record, k_req);
    if (req == NULL && PyErr_Occurred())
        return NULL;
    if (req != NULL && req != Py_None) {
        int has_res = PyDict_Contains(record, k_res);
        if (has_res < 0)
            return NULL;
        if (!has_res && PyDict_Check(req)) {
            PyObject *found = pair_of(req, k_method, req, k_url, k_method, k_url);
            if (found != NULL || PyErr_Occurred())
                return found;
        }
        return PyObject_CallOneArg(http_fields, record);
    }
    PyObject *res = PyDict_GetItemWithError(record, k_res);
    if (res == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    if (res == Py_None)
        Py_RETURN_NONE;
    if (PyDict_Check(res)) {
        PyObject *found = pair_of(res, k_status_code_in, record, k_response_time, k_status_code, k_duration_ms);
        if (found != NULL || PyErr_Occurred())
            return found;
    }
    return PyObject_CallOneArg(http_fields, record);
}

/* Whether `record` holds any of the keys the fast path adds (a collision: the careful path). */
static int collides(PyObject *record, PyObject *stream) {
    PyObject *added[] = {k_level_num, k_timestamp, k_message, k_host, k_service, k_source};
    for (size_t i = 0; i < sizeof added / sizeof added[0]; i++) {
        int has = PyDict_Contains(record, added[i]);
        if (has != 0)
            return has;
    }
    return stream == Py_None ? 0 : PyDict_Contains(record, k_stream);
}

/* One record the fast way: 1 done (`*event` set), 0 slow (record untouched), -1 error. */
static int fast_record(PyObject *record, PyObject *raw, PyObject *service, PyObject *source, PyObject *stream,
                       long long *second, PyObject **prefix, long long *stamp_out, PyObject **event) {
    PyObject *level = PyDict_GetItemWithError(record, k_level);
    PyObject *stamp = level ? PyDict_GetItemWithError(record, k_time) : NULL;
    PyObject *msg = stamp ? PyDict_GetItemWithError(record, k_msg) : NULL;
    PyObject *hostname = msg ? PyDict_GetItemWithError(record, k_hostname) : NULL;
    if (hostname == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyLong_CheckExact(level) || !PyLong_CheckExact(stamp) || !PyUnicode_CheckExact(msg) ||
        !PyUnicode_CheckExact(hostname))
        return 0;
    int overflow;
    long long ms = PyLong_AsLongLongAndOverflow(stamp, &overflow);
    if (overflow || (ms == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    if (ms < EPOCH_MS_MIN || ms >= EPOCH_MS_END)
        return 0;
    int clash = collides(record, stream);
    if (clash != 0)
        return clash < 0 ? -1 : 0;
    PyObject *http = http_of(record);
    if (http == NULL)
        return -1;
    if (http != Py_None) {
        int has = PyDict_Contains(record, k_http);
        if (has != 0) {
            Py_DECREF(http);
            return has < 0 ? -1 : 0;
        }
    }
    PyObject *word = PyDict_GetItemWithError(levels, level);
    if (word != NULL)
        Py_INCREF(word);
    else if (!PyErr_Occurred())
        word = PyObject_CallOneArg(level_from_number, level);
    if (word == NULL) {
        Py_DECREF(http);
        return -1;
    }
    long long sec = ms / 1000; /* ms is positive here */
    if (sec != *second) {
        PyObject *sec_obj = PyLong_FromLongLong(sec);
        PyObject *made = sec_obj ? PyObject_CallOneArg(second_prefix, sec_obj) : NULL;
        Py_XDECREF(sec_obj);
        if (made == NULL || !PyUnicode_Check(made)) {
            if (made != NULL)
                PyErr_SetString(PyExc_TypeError, "second_prefix must return str");
            Py_XDECREF(made);
            Py_DECREF(word);
            Py_DECREF(http);
            return -1;
        }
        Py_SETREF(*prefix, made);
        *second = sec;
    }
    PyObject *when = timestamp(*prefix, ms);
    if (when == NULL) {
        Py_DECREF(word);
        Py_DECREF(http);
        return -1;
    }
    /* The record keeps msg and hostname alive while they move. */
    Py_INCREF(msg);
    Py_INCREF(hostname);
    int failed = PyDict_DelItem(record, k_msg) < 0 || PyDict_DelItem(record, k_hostname) < 0 ||
                 PyDict_SetItem(record, k_level_num, level) < 0 || PyDict_SetItem(record, k_level, word) < 0 ||
                 PyDict_SetItem(record, k_timestamp, when) < 0 || PyDict_SetItem(record, k_message, msg) < 0 ||
                 PyDict_SetItem(record, k_host, hostname) < 0 || PyDict_SetItem(record, k_service, service) < 0 ||
                 PyDict_SetItem(record, k_source, source) < 0 ||
                 (stream != Py_None && PyDict_SetItem(record, k_stream, stream) < 0) ||
                 (http != Py_None && PyDict_SetItem(record, k_http, http) < 0);
    Py_DECREF(msg);
    Py_DECREF(hostname);
    Py_DECREF(word);
    Py_DECREF(when);
    Py_DECREF(http);
    if (failed)
        return -1;
    PyObject *call[] = {record, raw};
    *event = PyObject_Vectorcall(event_type, call, 2, NULL);
    *stamp_out = ms;
    return *event == NULL ? -1 : 1;
}

static PyObject *normalize_records(PyObject *self, PyObject *args) {
    PyObject *records, *raws, *service, *source, *stream, *prefix;
    long long second;
    if (!PyArg_ParseTuple(args, "O!O!UUOLU:normalize_records", &PyList_Type, &records, &PyList_Type, &raws, &service,
                          &source, &stream, &second, &prefix))
        return NULL;
    if (event_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() was not called");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(records);
    if (PyList_GET_SIZE(raws) != count) {
        PyErr_SetString(PyExc_ValueError, "records and raws differ in length");
        return NULL;
    }
    PyObject *events = PyList_New(count);
    PyObject *slow = PyList_New(0);
    PyObject *before = PyList_New(0);
    if (events == NULL || slow == NULL || before == NULL)
        goto error;
    Py_INCREF(prefix);
    long long fresh = -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        PyObject *event = NULL;
        long long ms = -1;
        int done = PyDict_CheckExact(record)
                       ? fast_record(record, PyList_GET_ITEM(raws, i), service, source, stream, &second, &prefix,
                                     &ms, &event)
                       : 0;
        if (done < 0)
            goto error_prefix;
        if (done) {
            PyList_SET_ITEM(events, i, event);
            fresh = ms;
            continue;
        }
        PyList_SET_ITEM(events, i, Py_NewRef(Py_None));
        PyObject *index = PyLong_FromSsize_t(i);
        PyObject *prior = index ? PyLong_FromLongLong(fresh) : NULL;
        int bad = prior == NULL || PyList_Append(slow, index) < 0 || PyList_Append(before, prior) < 0;
        Py_XDECREF(index);
        Py_XDECREF(prior);
        if (bad)
            goto error_prefix;
        fresh = -1;
    }
    PyObject *out = Py_BuildValue("(NNNLLN)", events, slow, before, fresh, second, prefix);
    return out;
error_prefix:
    Py_DECREF(prefix);
error:
    Py_XDECREF(events);
    Py_XDECREF(slow);
    Py_XDECREF(before);
    return NULL;
}


/* ---------------------------------------------------------------- redaction prefilter
 * shipper/redact.py's line prefilter: which lines of a chunk hold a trigger word some rule needs.
 * Words match in any case, with any '-' or '_' between their letters (a key's rule is judged on
 * its name without them: `pass_word` is a password field); `_live_`/`_test_` (Stripe) as
 * written; '@' always, '+' when phone numbers are redacted. A superset of what the rules match:
 * tests/test_redact.py's property tests hold it to that.
 */
static const char *const trigger_words[] = {"authorization", "cookie", "token", "key",   "akia", "asia", "password",
                                            "passwd",        "pwd",    "bearer", "eyj", "secret", "sbp", NULL};
static unsigned char lower_of[256];
/* What a byte may start: nothing (most), a new line, a sign (@ + _), or a trigger word. */
enum { PLAIN, NEWLINE, SIGN, LETTER };
static unsigned char kind_of[256];
/* Per lowercase letter, a bit per word of trigger_words that has it first, and second. */
static unsigned int first_of[256], second_of[256];
/* Per pair of bytes (the first in the low 8 bits), whether a trigger may start at the first: one bit
 * each, without and with phone numbers ('+'). Most pairs start none: one look-up a byte. */
static uint64_t may_start[2][65536 / 64];

static void scanner_init(void) {
    for (int c = 0; c < 256; c++)
        lower_of[c] = (unsigned char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
    for (int w = 0; trigger_words[w] != NULL; w++) {
        first_of[(unsigned char)trigger_words[w][0]] |= 1u << w;
        second_of[(unsigned char)trigger_words[w][1]] |= 1u << w;
    }
    for (int c = 0; c < 256; c++)
        kind_of[c] = first_of[lower_of[c]] ? LETTER : PLAIN;
    kind_of['\n'] = NEWLINE;
    kind_of['@'] = kind_of['+'] = kind_of['_'] = SIGN;
    for (int pair = 0; pair < 65536; pair++) {
        int c = pair & 255, next = pair >> 8, start;
        if (c == '@')
            start = 1;
        else if (c == '_')
            start = next == 'l' || next == 't'; /* _live_, _test_ */
        else
            start = kind_of[c] == LETTER &&
                    (next == '-' || next == '_' || (first_of[lower_of[c]] & second_of[lower_of[next]]) != 0);
        for (int phones = 0; phones < 2; phones++)
            if (start || (phones && c == '+'))
                may_start[phones][pair >> 6] |= 1ULL << (pair & 63);
    }
}

/* Whether trigger word `word` goes on at data[j] (its first two letters already matched). */
static int word_at(const unsigned char *data, Py_ssize_t j, Py_ssize_t size, const char *word) {
    for (const char *rest = word + 2; *rest; rest++, j++) {
        while (j < size && (data[j] == '-' || data[j] == '_'))
            j++;
        if (j >= size || lower_of[data[j]] != (unsigned char)*rest)
            return 0;
    }
    return 1;
}

/* Whether a trigger starts at data[i], a byte of kind SIGN or LETTER. */
static int trigger_at(const unsigned char *data, Py_ssize_t i, Py_ssize_t size, int phones) {
    unsigned char c = data[i];
    if (kind_of[c] == SIGN)
        return c == '@' || (c == '+' && phones) ||
               (c == '_' && size - i >= 6 && data[i + 5] == '_' &&
                (memcmp(data + i + 1, "live", 4) == 0 || memcmp(data + i + 1, "test", 4) == 0));
    Py_ssize_t j = i + 1;
    while (j < size && (data[j] == '-' || data[j] == '_'))
        j++;
    if (j >= size)
        return 0;
    for (unsigned int words = first_of[lower_of[c]] & second_of[lower_of[data[j]]]; words; words &= words - 1)
        if (word_at(data, j + 1, size, trigger_words[__builtin_ctz(words)]))
            return 1;
    return 0;
}


/* Whether `size` bytes at `data` hold a trigger. */
static int has_trigger(const unsigned char *data, Py_ssize_t size, int phones) {
    for (Py_ssize_t i = 0; i < size; i++)
        if (kind_of[data[i]] > NEWLINE && trigger_at(data, i, size, phones))
            return 1;
    return 0;
}

/* 1 when a string holds a trigger (or has no UTF-8 form: the careful path judges it), -1 on error. */
static int text_has_trigger(PyObject *text, int phones) {
    Py_ssize_t size;
    const char *data = PyUnicode_AsUTF8AndSize(text, &size);
    if (data == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
            return -1;
        PyErr_Clear();
        return 1;
    }
    return has_trigger((const unsigned char *)data, size, phones);
}

static int note_slot(PyObject *out, PyObject *container, PyObject *slot) {
    PyObject *pair = PyTuple_Pack(2, container, slot);
    if (pair == NULL)
        return -1;
    int failed = PyList_Append(out, pair);
    Py_DECREF(pair);
    return failed;
}

static int walk_node(PyObject *node, int phones, PyObject *out, int depth);

/* A value under a key (or at an index) whose own name holds no trigger. */
static int walk_value(PyObject *container, PyObject *slot, PyObject *value, int phones, PyObject *out, int depth) {
    if (PyUnicode_Check(value)) {
        int hit = text_has_trigger(value, phones);
        return hit <= 0 ? hit : note_slot(out, container, slot);
    }
    if (PyDict_Check(value) || PyList_Check(value)) {
        if (depth >= 100) /* the careful path has its own limits */
            return note_slot(out, container, slot);
        return walk_node(value, phones, out, depth + 1);
    }
    return 0;
}

static int walk_node(PyObject *node, int phones, PyObject *out, int depth) {
    if (PyDict_Check(node)) {
        Py_ssize_t position = 0;
        PyObject *key, *value;
        while (PyDict_Next(node, &position, &key, &value)) {
            int hit = PyUnicode_Check(key) ? text_has_trigger(key, phones) : 0;
            if (hit < 0)
                return -1;
            /* The careful path reads the key's rule; a value of a key named like a secret is its to judge. */
            Py_INCREF(value);
            int failed = hit ? note_slot(out, node, key) : walk_value(node, key, value, phones, out, depth);
            Py_DECREF(value);
            if (failed)
                return -1;
        }
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(node); i++) {
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL)
            return -1;
        PyObject *item = PyList_GET_ITEM(node, i);
        Py_INCREF(item);
        int failed = walk_value(node, index, item, phones, out, depth);
        Py_DECREF(item);
        Py_DECREF(index);
        if (failed)
            return -1;
    }
    return 0;
}

static PyObject *suspect_slots(PyObject *self, PyObject *args) {
    PyObject *record;
    int phones;
    if (!PyArg_ParseTuple(args, "O!p:suspect_slots", &PyDict_Type, &record, &phones))
        return NULL;
    PyObject *out = PyList_New(0);
    if (out != NULL && walk_node(record, phones, out, 0) < 0)
        Py_CLEAR(out);
    return out;
}

/* Newlines in `size` bytes at `data`. */
static Py_ssize_t newlines_in(const unsigned char *data, Py_ssize_t size) {
    Py_ssize_t count = 0;
    for (const unsigned char *p = data, *end = data + size; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++)
        count++;
    return count;
}

/* newlines(data): how many newlines `data` holds; memchr's steps, ~15x `bytes.count`'s byte loop. */
static PyObject *newlines(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t count = newlines_in((const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(count);
}

static PyObject *trigger_lines(PyObject *self, PyObject *args) {
    Py_buffer view;
    int phones;
    if (!PyArg_ParseTuple(args, "y*p:trigger_lines", &view, &phones))
        return NULL;
    const unsigned char *data = (const unsigned char *)view.buf;
    const uint64_t *starts = may_start[phones];
    Py_ssize_t size = view.len, line = 0, counted = 0; /* the newlines before `counted` are in `line` */
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < size; i++) {
        unsigned pair = data[i] | (i + 1 < size ? (unsigned)data[i + 1] << 8 : 0);
        if (!((starts[pair >> 6] >> (pair & 63)) & 1) || !trigger_at(data, i, size, phones))
            continue;
        line += newlines_in(data + counted, i - counted);
        PyObject *index = PyLong_FromSsize_t(line);
        if (index == NULL || PyList_Append(out, index) < 0) {
            Py_XDECREF(index);
            Py_CLEAR(out);
            goto done;
        }
        Py_DECREF(index);
        const unsigned char *next = memchr(data + i, '\n', (size_t)(size - i));
        if (next == NULL)
            break;
        i = next - data; /* the loop's i++ goes past the newline */
        line++;
        counted = i + 1;
    }
done:
    PyBuffer_Release(&view);
    return out;
}

/* ---------------------------------------------------------------- the direct lane
 * A plain pino line straight to the fields-as-JSON wire form (what `FieldsJson` makes of the
 * event the normal path builds from it), without building the record: the line is checked to be
 * JSON in the exact form msgspec writes (compact, no duplicate key, strings in valid UTF-8 with
 * only the escapes msgspec uses, canonical numbers), then copied member by member with the fast
 * path's changes (shipper/parsing/pino.py). A line that is anything else is left for the normal
 * path; tests/test_direct.py holds the lane's output to the normal path's, byte for byte.
 */
#define LANE_DEPTH 32
#define LANE_KEYS 64
#define LANE_LEVELS 128

typedef struct {
    const unsigned char *key, *value;
    Py_ssize_t key_size, value_size;
} member;

/* A byte a JSON string holds as is (msgspec writes it so): printable ASCII but '"' and '\\'. */
static unsigned char verbatim[256];
/* Per pino level number below LANE_LEVELS, its word as JSON (`"info"`), else NULL. */
static PyObject *level_words[LANE_LEVELS];

static void lane_init(void) {
    for (int c = 0x20; c < 0x80; c++)
        verbatim[c] = c != '"' && c != '\\';
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* After a byte >= 0x80: one UTF-8 sequence as orjson accepts it (no overlong form, no surrogate). */
static const unsigned char *utf8_sequence(const unsigned char *p, const unsigned char *end) {
    unsigned c = p[0];
    if (c >= 0xC2 && c <= 0xDF)
        return end - p >= 2 && (p[1] & 0xC0) == 0x80 ? p + 2 : NULL;
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return NULL;
        if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0))
            return NULL;
        return p + 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return NULL;
        if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))
            return NULL;
        return p + 4;
    }
    return NULL;
}

/* From just after a string's opening quote to just after its closing one; NULL when msgspec
 * would write it otherwise. Escapes kept: \" \\ \b \f \n \r \t, and \u00XX (lowercase) for the
 * other control characters. */
#define BYTES(c) (0x0101010101010101ULL * (c))
/* Whether any of 8 bytes is not `verbatim`: a control character, '"', '\\' or a byte >= 0x80. */
static int eight_not_verbatim(uint64_t x) {
    uint64_t quote = x ^ BYTES('"'), backslash = x ^ BYTES('\\');
    uint64_t low = x - BYTES(0x20), no_quote = quote - BYTES(1), no_backslash = backslash - BYTES(1);
    return ((x | (low & ~x) | (no_quote & ~quote) | (no_backslash & ~backslash)) & BYTES(0x80)) != 0;
}

static const unsigned char *lane_string(const unsigned char *p, const unsigned char *end) {
    for (;;) {
        uint64_t eight;
        while (end - p >= 8 && (memcpy(&eight, p, 8), !eight_not_verbatim(eight)))
            p += 8; /* most of a string: 8 bytes a step */
        while (p < end && verbatim[*p])
            p++;
        if (p >= end)
            return NULL;
        unsigned c = *p;
        if (c == '"')
            return p + 1;
        if (c == '\\') {
            if (end - p < 2)
                return NULL;
            unsigned e = p[1];
            if (e == '"' || e == '\\' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
                p += 2;
                continue;
            }
            if (e != 'u' || end - p < 6 || p[2] != '0' || p[3] != '0' || (p[4] != '0' && p[4] != '1'))
                return NULL;
            unsigned h = p[5];
            int low = is_digit((unsigned char)h) ? (int)(h - '0') : (h >= 'a' && h <= 'f') ? (int)(h - 'a' + 10) : -1;
            int code = (p[4] - '0') * 16 + low;
            if (low < 0 || code == 8 || code == 9 || code == 10 || code == 12 || code == 13)
                return NULL;
            p += 6;
            continue;
        }
        if (c < 0x80)
            return NULL; /* a raw control character: not JSON */
        p = utf8_sequence(p, end);
        if (p == NULL)
            return NULL;
    }
}

/* Whether a decimal `whole`.`fraction` (no exponent, whole without leading zeros) is surely Python's
 * repr of its value, without converting it: at most 15 significant digits (DBL_DIG: two such
 * decimals never make the same double, so the shortest one that reads back as it is itself), no
 * trailing zero but in `X.0`, and at least 0.001 unless zero (repr writes below 1e-4 with an
 * exponent). Anything else is judged by converting (`lane_number`). */
static int shortest_decimal(const unsigned char *whole, Py_ssize_t whole_size, const unsigned char *fraction,
                            Py_ssize_t fraction_size) {
    if (fraction[fraction_size - 1] == '0')
        return fraction_size == 1 && whole_size <= 15; /* X.0: an integer below 1e15, written exactly */
    if (whole_size == 1 && whole[0] == '0') {
        Py_ssize_t zeros = 0;
        while (zeros < fraction_size && fraction[zeros] == '0')
            zeros++;
        return zeros < 3 && fraction_size - zeros <= 15;
    }
    return whole_size + fraction_size <= 15;
}

/* A number as msgspec writes what orjson reads of it: an integer of at most 18 digits (not -0),
 * or a fraction without exponent that is exactly Python's repr of its value. */
static const unsigned char *lane_number(const unsigned char *p, const unsigned char *end) {
    const unsigned char *start = p;
    if (p < end && *p == '-')
        p++;
    const unsigned char *digits = p;
    if (p < end && *p == '0')
        p++;
    else if (p < end && *p >= '1' && *p <= '9')
        while (p < end && is_digit(*p))
            p++;
    else
        return NULL;
    Py_ssize_t whole = p - digits;
    if (p < end && (*p == 'e' || *p == 'E'))
        return NULL;
    if (p == end || *p != '.') {
        if (whole > 18 || (start != digits && whole == 1 && *digits == '0'))
            return NULL;
        return p;
    }
    p++;
    const unsigned char *fraction = p;
    while (p < end && is_digit(*p))
        p++;
    if (p == fraction || (p < end && (*p == 'e' || *p == 'E')) || p - start > 40)
        return NULL;
    if (shortest_decimal(digits, whole, fraction, p - fraction))
        return p;
    char text[48];
    size_t size = (size_t)(p - start);
    memcpy(text, start, size);
    text[size] = '\0';
    double value = PyOS_string_to_double(text, NULL, NULL);
    if (value == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return NULL;
    }
    char *repr = PyOS_double_to_string(value, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (repr == NULL) {
        PyErr_Clear();
        return NULL;
    }
    int same = strlen(repr) == size && memcmp(repr, text, size) == 0;
    PyMem_Free(repr);
    return same ? p : NULL;
}

static const unsigned char *lane_value(const unsigned char *p, const unsigned char *end, int depth);

/* An object's members from just after its '{' (at most `room` of them, keys without escapes and
 * all distinct) to just after its '}'; NULL otherwise. */
static const unsigned char *lane_members(const unsigned char *p, const unsigned char *end, int depth, member *out,
                                         int room, int *count) {
    int n = 0;
    if (p < end && *p == '}') {
        *count = 0;
        return p + 1;
    }
    for (;;) {
        if (p >= end || *p != '"' || n == room)
            return NULL;
        const unsigned char *key = p + 1, *after = lane_string(key, end);
        if (after == NULL || after >= end || *after != ':')
            return NULL;
        Py_ssize_t size = after - 1 - key;
        if (memchr(key, '\\', (size_t)size) != NULL)
            return NULL;
        for (int i = 0; i < n; i++)
            if (out[i].key_size == size && memcmp(out[i].key, key, (size_t)size) == 0)
                return NULL; /* orjson keeps the last, msgspec would write it once */
        const unsigned char *value = after + 1, *next = lane_value(value, end, depth + 1);
        if (next == NULL || next >= end)
            return NULL;
        out[n] = (member){key, value, size, next - value};
        n++;
        if (*next == '}') {
            *count = n;
            return next + 1;
        }
        if (*next != ',')
            return NULL;
        p = next + 1;
    }
}

static const unsigned char *lane_value(const unsigned char *p, const unsigned char *end, int depth) {
    if (p >= end || depth > LANE_DEPTH)
        return NULL;
    switch (*p) {
    case '"':
        return lane_string(p + 1, end);
    case '{': {
        member inner[LANE_KEYS];
        int count;
        return lane_members(p + 1, end, depth, inner, LANE_KEYS, &count);
    }
    case '[':
        p++;
        if (p < end && *p == ']')
            return p + 1;
        for (;;) {
            p = lane_value(p, end, depth + 1);
            if (p == NULL || p >= end)
                return NULL;
            if (*p == ']')
                return p + 1;
            if (*p != ',')
                return NULL;
            p++;
        }
    case 't':
        return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f':
        return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n':
        return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default:
        return lane_number(p, end);
    }
}

/* A member's value as a non-negative integer of at most 18 digits, else -1. */
static long long lane_count(const member *m) {
    if (m == NULL || m->value_size > 18 || m->value_size == 0)
        return -1;
    long long out = 0;
    for (Py_ssize_t i = 0; i < m->value_size; i++) {
        if (!is_digit(m->value[i]))
            return -1;
        out = out * 10 + (m->value[i] - '0');
    }
    return out;
}

static int is_key(const member *m, const char *key, Py_ssize_t size) {
    return m->key_size == size && memcmp(m->key, key, (size_t)size) == 0;
}

#define IS_KEY(m, literal) is_key((m), literal, (Py_ssize_t)sizeof literal - 1)

static const member *lane_find(const member *members, int count, const char *key) {
    Py_ssize_t size = (Py_ssize_t)strlen(key);
    for (int i = 0; i < count; i++)
        if (is_key(&members[i], key, size))
            return &members[i];
    return NULL;
}

typedef struct {
    char *at;
} writer;

static void put(writer *w, const void *data, Py_ssize_t size) {
    memcpy(w->at, data, (size_t)size);
    w->at += size;
}

#define PUT(w, literal) put((w), literal, (Py_ssize_t)sizeof literal - 1)

static void put_member(writer *w, const member *m) {
    *w->at++ = '"';
    put(w, m->key, m->key_size);
    PUT(w, "\":");
    put(w, m->value, m->value_size);
}

static int is_null(const member *m) { return m->value_size == 4 && memcmp(m->value, "null", 4) == 0; }

/* An object member's members into `inner` (0 when the value is not an object). */
static int object_members(const member *m, member *inner, int *count) {
    return m->value[0] == '{' &&
           lane_members(m->value + 1, m->value + m->value_size, 1, inner, LANE_KEYS, count) == m->value + m->value_size;
}

/* One `"name":value` of the http object, after a comma but for the first. */
static void put_http(writer *w, int *first, const char *name, const member *value) {
    if (*first) {
        PUT(w, ",\"http\":{");
        *first = 0;
    } else
        *w->at++ = ',';
    *w->at++ = '"';
    put(w, name, (Py_ssize_t)strlen(name));
    PUT(w, "\":");
    put(w, value->value, value->value_size);
}

/* Fastify's access fields as JSON into `w`, as the fast path makes them (`_access_fields`, else
 * `http_fields` in shipper/parsing/records.py); nothing for a line without them. 0 when the
 * record holds its own `http` besides: the fast path leaves that line to the careful one. */
static int lane_http(writer *w, const member *members, int count, int has_http) {
    const member *req = lane_find(members, count, "req"), *res = lane_find(members, count, "res");
    const member *took = lane_find(members, count, "responseTime");
    member req_in[LANE_KEYS], res_in[LANE_KEYS];
    int req_n = 0, res_n = 0;
    int req_obj = req != NULL && object_members(req, req_in, &req_n);
    int res_obj = res != NULL && object_members(res, res_in, &res_n);
    const member *method = req_obj ? lane_find(req_in, req_n, "method") : NULL;
    const member *url = req_obj ? lane_find(req_in, req_n, "url") : NULL;
    const member *status = res_obj ? lane_find(res_in, res_n, "statusCode") : NULL;
    int first = 1;
    if (req != NULL && !is_null(req)) {
        if (res == NULL && method != NULL && url != NULL) /* an incoming request */
            took = NULL;
        else if (took != NULL && is_null(took))
            took = NULL;
    } else if (res == NULL || is_null(res)) {
        return 1;
    } else if (status != NULL && took != NULL) { /* a completed request: responseTime as it is */
        method = url = NULL;
    } else {
        method = url = NULL;
        if (took != NULL && is_null(took))
            took = NULL;
    }
    if (method != NULL)
        put_http(w, &first, "method", method);
    if (url != NULL)
        put_http(w, &first, "url", url);
    if (status != NULL)
        put_http(w, &first, "status_code", status);
    if (took != NULL)
        put_http(w, &first, "duration_ms", took);
    if (first)
        return 1;
    *w->at++ = '}';
    return !has_http;
}

/* How the lane writes a line: the fields form (`FieldsJson`), or Datadog's log object
 * (sinks/datadog_logs.py `LogEncoder.to_doc`, then its time window and size rules). */
enum { FIELDS, DATADOG, LOKI, CLOUDWATCH };

static char *escape_into(char *w, const unsigned char *p, Py_ssize_t size);
static int decimal_into(char *out, long long value);

typedef struct {
    PyObject *forbidden, *constants, *extra;
    int kind;
    PyObject *ddsource;               /* Datadog: `,"ddsource":"nodejs"` */
    PyObject *by_level[LANE_LEVELS];  /* per level number (borrowed): Datadog's `,"ddtags":"..."`
                                         (NULL: none), Loki's stream (str; NULL: the normal way) */
    long long oldest, newest;         /* the time window, epoch ms */
    PyObject *restamp;                /* the re-stamp (str), NULL: out-of-window lines go the normal way */
    long long restamp_ms;             /* the re-stamp in epoch ms */
    Py_ssize_t max_bytes;             /* a longer log goes the normal way (it is cut there) */
    int level_label;                  /* Loki: the level is a label, not in the line */
    PyObject *stream;                 /* CloudWatch: the log stream (str, borrowed) */
} lane_form;

/* `"YYYY-MM-DDTHH:MM:SS.mmmZ"` of `ms` (prefix: its second's first 19 characters). */
static void put_stamp(writer *w, const char *prefix, Py_ssize_t prefix_size, long long ms) {
    int frac = (int)(ms % 1000);
    *w->at++ = '"';
    put(w, prefix, prefix_size);
    char millis[6] = {'.', (char)('0' + frac / 100), (char)('0' + frac / 10 % 10), (char)('0' + frac % 10), 'Z', '"'};
    put(w, millis, 6);
}

/* One line in the lane: its wire form, Py_None when the normal path must take it, NULL on error.
 * `*stamp` gets its time (epoch ms); `*sent` what the preparer gives with it: for Datadog the
 * timestamp as sent (a new str), for Loki `(stream, ns, b"")`. */
/* The lane's output: the lines it wrote, each ending in a newline, in one growing bytes object. */
typedef struct {
    PyObject *bytes;
    Py_ssize_t used;
} lane_out;

/* Where `room` more bytes can be written at the end of `out`; NULL on error. */
static char *lane_reserve(lane_out *out, Py_ssize_t room) {
    Py_ssize_t size = PyBytes_GET_SIZE(out->bytes);
    if (size - out->used < room && _PyBytes_Resize(&out->bytes, Py_MAX(2 * size, out->used + room)) < 0)
        return NULL;
    return PyBytes_AS_STRING(out->bytes) + out->used;
}

/* One line in `form` at the end of `out` (1), or not the lane's (0, nothing written), or an error (-1). */
static int lane_line(const unsigned char *data, Py_ssize_t size, const lane_form *form, long long *second,
                     PyObject **prefix, long long *stamp, PyObject **sent, int *restamp_out, lane_out *buffer) {
    member members[LANE_KEYS];
    int count;
    if (size < 2 || data[0] != '{' || lane_members(data + 1, data + size, 0, members, LANE_KEYS, &count) != data + size)
        return 0;
    const member *level = NULL, *time = NULL, *msg = NULL, *hostname = NULL;
    int has_http = 0;
    for (int i = 0; i < count; i++) {
        const member *m = &members[i];
        if (IS_KEY(m, "level"))
            level = m;
        else if (IS_KEY(m, "time"))
            time = m;
        else if (IS_KEY(m, "msg"))
            msg = m;
        else if (IS_KEY(m, "hostname"))
            hostname = m;
        else if (IS_KEY(m, "http"))
            has_http = 1;
    }
    long long number = lane_count(level), ms = lane_count(time);
    if (number < 0 || number >= LANE_LEVELS || level_words[number] == NULL || ms < EPOCH_MS_MIN || ms >= EPOCH_MS_END ||
        msg == NULL || msg->value[0] != '"' || hostname == NULL || hostname->value[0] != '"')
        return 0;
    Py_ssize_t keys = PyTuple_GET_SIZE(form->forbidden);
    for (Py_ssize_t k = 0; k < keys; k++) {
        PyObject *key = PyTuple_GET_ITEM(form->forbidden, k);
        if (lane_find(members, count, PyBytes_AS_STRING(key)) != NULL)
            return 0;
    }
    int restamped = form->kind != FIELDS && (ms < form->oldest || ms > form->newest);
    if (form->kind == LOKI && form->by_level[number] == NULL)
        return 0;
    if (restamped && form->restamp == NULL)
        return 0;
    if (ms / 1000 != *second) {
        PyObject *fresh = PyObject_CallFunction(second_prefix, "L", ms / 1000);
        if (fresh == NULL)
            return -1;
        Py_SETREF(*prefix, fresh);
        *second = ms / 1000;
    }
    Py_ssize_t prefix_size, restamp_size = 0;
    const char *head = PyUnicode_AsUTF8AndSize(*prefix, &prefix_size), *restamp = NULL;
    if (head == NULL)
        return -1;
    if (restamped && (restamp = PyUnicode_AsUTF8AndSize(form->restamp, &restamp_size)) == NULL)
        return -1;
    PyObject *word = level_words[number];
    PyObject *tags = form->kind == DATADOG ? form->by_level[number] : NULL;
    Py_ssize_t room = 2 * size + 256 + 2 * prefix_size + restamp_size + PyBytes_GET_SIZE(word) +
                      PyBytes_GET_SIZE(form->constants) + PyBytes_GET_SIZE(form->extra) +
                      (form->kind == DATADOG ? PyBytes_GET_SIZE(form->ddsource) : 0) + (tags ? PyBytes_GET_SIZE(tags) : 0);
    /* CloudWatch and Loki: the fields go to the end of the room, then escaped as a JSON string's
     * contents into the log event's message or Loki's line (at most twice as long: the lane's JSON
     * holds no raw control character). */
    Py_ssize_t wrapped = form->kind == CLOUDWATCH || form->kind == LOKI ? 2 * room + 64 : 0;
    char *event = lane_reserve(buffer, wrapped + room + 1);
    if (event == NULL)
        return -1;
    char *out = event + wrapped;
    writer w = {out};
    *w.at++ = '{';
    for (int i = 0; i < count; i++) {
        const member *m = &members[i];
        if (m == msg || m == hostname || (m == level && (form->kind == DATADOG || form->level_label)))
            continue;
        if (w.at - out > 1)
            *w.at++ = ',';
        if (m == level) {
            PUT(&w, "\"level\":");
            put(&w, PyBytes_AS_STRING(word), PyBytes_GET_SIZE(word));
        } else
            put_member(&w, m);
    }
    if (w.at - out > 1)
        *w.at++ = ',';
    PUT(&w, "\"level_num\":");
    put(&w, level->value, level->value_size);
    PUT(&w, ",\"timestamp\":");
    if (restamped) {
        *w.at++ = '"';
        put(&w, restamp, restamp_size);
        *w.at++ = '"';
    } else
        put_stamp(&w, head, prefix_size, ms);
    PUT(&w, ",\"message\":");
    put(&w, msg->value, msg->value_size);
    if (form->kind != DATADOG) {
        PUT(&w, ",\"host\":");
        put(&w, hostname->value, hostname->value_size);
    }
    put(&w, PyBytes_AS_STRING(form->constants), PyBytes_GET_SIZE(form->constants));
    if (!lane_http(&w, members, count, has_http))
        return 0;
    put(&w, PyBytes_AS_STRING(form->extra), PyBytes_GET_SIZE(form->extra));
    if (form->kind == DATADOG) {
        PUT(&w, ",\"hostname\":");
        put(&w, hostname->value, hostname->value_size);
        PUT(&w, ",\"status\":");
        put(&w, PyBytes_AS_STRING(word), PyBytes_GET_SIZE(word));
        put(&w, PyBytes_AS_STRING(form->ddsource), PyBytes_GET_SIZE(form->ddsource));
        if (tags != NULL)
            put(&w, PyBytes_AS_STRING(tags), PyBytes_GET_SIZE(tags));
    }
    if (restamped) {
        PUT(&w, ",\"shipper.original_timestamp\":");
        put_stamp(&w, head, prefix_size, ms);
    }
    *w.at++ = '}';
    Py_ssize_t written = w.at - out;
    if (form->kind != FIELDS && written > form->max_bytes)
        return 0;
    if (form->kind == CLOUDWATCH) {
        long long sent_ms = restamped ? form->restamp_ms : ms;
        if ((*sent = Py_BuildValue("(LO)", sent_ms, form->stream)) == NULL)
            return -1;
        char *at = event;
        memcpy(at, "{\"timestamp\":", 13);
        at += 13;
        at += decimal_into(at, sent_ms);
        memcpy(at, ",\"message\":\"", 12);
        at = escape_into(at + 12, (const unsigned char *)out, written);
        memcpy(at, "\"}\n", 3);
        buffer->used += at + 3 - event;
        *restamp_out = restamped;
        *stamp = ms;
        return 1;
    }
    if (form->kind == DATADOG) {
        if (restamped)
            *sent = Py_NewRef(form->restamp);
        else if ((*sent = timestamp(*prefix, ms)) == NULL)
            return -1;
    } else if (form->kind == LOKI) {
        *sent = Py_BuildValue("(OLy#)", form->by_level[number], (restamped ? form->restamp_ms : ms) * 1000000LL, "", (Py_ssize_t)0);
        if (*sent == NULL)
            return -1;
        char *at = escape_into(event, (const unsigned char *)out, written);
        *at++ = '\n';
        buffer->used += at - event;
        *restamp_out = restamped;
        *stamp = ms;
        return 1;
    }
    *w.at++ = '\n';
    buffer->used += written + 1;
    *restamp_out = restamped;
    *stamp = ms;
    return 1;
}

/* A sink's settings into `form`: ("datadog", ddsource member, {level number: ddtags member},
 * window, max bytes), ("loki", {level number: stream}, window, max bytes, level is a label) or
 * ("cloudwatch", log stream, window, longest message), the window being oldest, newest, re-stamp or
 * None, re-stamp ms (shipper/rules.py `lane_window`). */
static int sink_form(PyObject *settings, lane_form *form) {
    PyObject *by_level, *restamp;
    const char *kind;
    if (!PyTuple_Check(settings) || PyTuple_GET_SIZE(settings) < 1 ||
        (kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(settings, 0))) == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "sink settings must be a tuple naming its kind");
        return -1;
    }
    if (strcmp(kind, "datadog") == 0) {
        form->kind = DATADOG;
        if (!PyArg_ParseTuple(settings, "sSO!LLOLn:datadog settings", &kind, &form->ddsource, &PyDict_Type, &by_level,
                              &form->oldest, &form->newest, &restamp, &form->restamp_ms, &form->max_bytes))
            return -1;
    } else if (strcmp(kind, "loki") == 0) {
        form->kind = LOKI;
        if (!PyArg_ParseTuple(settings, "sO!LLOLnp:loki settings", &kind, &PyDict_Type, &by_level, &form->oldest,
                              &form->newest, &restamp, &form->restamp_ms, &form->max_bytes, &form->level_label))
            return -1;
    } else if (strcmp(kind, "cloudwatch") == 0) {
        form->kind = CLOUDWATCH;
        by_level = NULL;
        if (!PyArg_ParseTuple(settings, "sULLOLn:cloudwatch settings", &kind, &form->stream, &form->oldest,
                              &form->newest, &restamp, &form->restamp_ms, &form->max_bytes))
            return -1;
    } else {
        PyErr_Format(PyExc_ValueError, "no lane form %s", kind);
        return -1;
    }
    form->restamp = restamp == Py_None ? NULL : restamp;
    if (form->restamp != NULL && !PyUnicode_Check(form->restamp)) {
        PyErr_SetString(PyExc_TypeError, "the re-stamp must be a str");
        return -1;
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (by_level != NULL && PyDict_Next(by_level, &pos, &key, &value)) {
        long number = PyLong_AsLong(key);
        if (number == -1 && PyErr_Occurred())
            return -1;
        if (number >= 0 && number < LANE_LEVELS && (form->kind == DATADOG ? PyBytes_Check(value) : PyUnicode_Check(value)))
            form->by_level[number] = value;
    }
    return 0;
}

/* direct_lines(lines, flagged, forbidden, constants, extra, second, prefix, sink=None): see
 * shipper/parsing/direct.py. */
static PyObject *direct_lines(PyObject *self, PyObject *args) {
    PyObject *joined, *flagged, *prefix, *settings = Py_None;
    long long second;
    lane_form form;
    memset(&form, 0, sizeof form);
    if (!PyArg_ParseTuple(args, "SSO!SSLU|O:direct_lines", &joined, &flagged, &PyTuple_Type, &form.forbidden,
                          &form.constants, &form.extra, &second, &prefix, &settings))
        return NULL;
    if (settings != Py_None && sink_form(settings, &form) < 0)
        return NULL;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(joined);
    const unsigned char *end = data + PyBytes_GET_SIZE(joined);
    Py_ssize_t count = 1;
    for (const unsigned char *p = data; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++)
        count++;
    Py_ssize_t flags = PyBytes_GET_SIZE(flagged); /* the lines after them are not flagged */
    if (flags > count) {
        PyErr_SetString(PyExc_ValueError, "flagged holds a byte per line, at most");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(form.forbidden); k++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(form.forbidden, k))) {
            PyErr_SetString(PyExc_TypeError, "forbidden keys must be bytes");
            return NULL;
        }
    const char *marks = PyBytes_AS_STRING(flagged);
    lane_out out = {PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(joined) * 2 + 1024), 0};
    PyObject *slow = PyList_New(0), *slow_lines = PyList_New(0), *cuts = PyList_New(0), *before = PyList_New(0);
    PyObject *stamps = form.kind != FIELDS ? PyList_New(count) : Py_NewRef(Py_None);
    Py_INCREF(prefix);
    long long fresh = -1, restamped = 0;
    if (out.bytes == NULL || slow == NULL || slow_lines == NULL || cuts == NULL || before == NULL || stamps == NULL)
        goto fail;
    const unsigned char *line = data;
    for (Py_ssize_t i = 0; i < count; i++) {
        const unsigned char *stop = memchr(line, '\n', (size_t)(end - line));
        if (stop == NULL)
            stop = end;
        PyObject *sent = NULL;
        long long stamp = -1;
        int was_restamped = 0, taken = 0;
        if (!(i < flags && marks[i]) &&
            (taken = lane_line(line, stop - line, &form, &second, &prefix, &stamp, &sent, &was_restamped, &out)) < 0)
            goto fail;
        restamped += was_restamped;
        if (form.kind != FIELDS)
            PyList_SET_ITEM(stamps, i, sent != NULL ? sent : Py_NewRef(Py_None));
        if (taken) {
            fresh = stamp;
        } else { /* the normal way, in its place: where it goes in the output, and the clock before it */
            PyObject *index = PyLong_FromSsize_t(i), *prior = PyLong_FromLongLong(fresh);
            PyObject *cut = PyLong_FromSsize_t(out.used);
            PyObject *text = PyBytes_FromStringAndSize((const char *)line, stop - line);
            int failed = index == NULL || prior == NULL || cut == NULL || text == NULL || PyList_Append(slow, index) < 0 ||
                         PyList_Append(before, prior) < 0 || PyList_Append(cuts, cut) < 0 ||
                         PyList_Append(slow_lines, text) < 0;
            Py_XDECREF(index);
            Py_XDECREF(prior);
            Py_XDECREF(cut);
            Py_XDECREF(text);
            if (failed)
                goto fail;
            fresh = -1;
        }
        line = stop + 1;
    }
    if (_PyBytes_Resize(&out.bytes, out.used) < 0)
        goto fail;
    return Py_BuildValue("(NNNLLNNLNNn)", out.bytes, slow, before, fresh, second, prefix, stamps, restamped, cuts,
                         slow_lines, count);
fail:
    Py_XDECREF(out.bytes);
    Py_XDECREF(slow);
    Py_XDECREF(slow_lines);
    Py_XDECREF(cuts);
    Py_XDECREF(before);
    Py_XDECREF(stamps);
    Py_DECREF(prefix);
    return NULL;
}

/* set_level_words({number: word as JSON bytes}): the level words the lane writes. */
static PyObject *set_level_words(PyObject *self, PyObject *args) {
    PyObject *words, *key, *value;
    Py_ssize_t pos = 0;
    if (!PyArg_ParseTuple(args, "O!:set_level_words", &PyDict_Type, &words))
        return NULL;
    for (int i = 0; i < LANE_LEVELS; i++)
        Py_CLEAR(level_words[i]);
    while (PyDict_Next(words, &pos, &key, &value)) {
        long number = PyLong_AsLong(key);
        if (number == -1 && PyErr_Occurred())
            return NULL;
        if (number >= 0 && number < LANE_LEVELS && PyBytes_Check(value))
            level_words[number] = Py_NewRef(value);
    }
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- prepared logs as events
 * shipper/event.py's `encoded_events`: one `Encoded` per line of a preparer's NDJSON. In Python
 * each costs a `bytes` slice and an `__init__` frame (~1.5 us of the agent's time a log); here its
 * three slots are set directly.
 */
static Py_ssize_t slot_offset(PyTypeObject *kind, const char *name) {
    PyObject *descr = PyObject_GetAttrString((PyObject *)kind, name);
    if (descr == NULL)
        return -1;
    Py_ssize_t offset = -1;
    if (Py_TYPE(descr) == &PyMemberDescr_Type && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX)
        offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    else
        PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", kind->tp_name, name);
    Py_DECREF(descr);
    return offset;
}

/* The body is any bytes-like object: a worker's reply arrives in a bytearray of its size. */
static PyObject *encoded_events(PyObject *self, PyObject *args) {
    PyTypeObject *kind;
    PyObject *fields, *stamps, *out = NULL;
    Py_buffer body;
    if (!PyArg_ParseTuple(args, "O!Oy*O:encoded_events", &PyType_Type, &kind, &fields, &body, &stamps))
        return NULL;
    Py_ssize_t at_fields = slot_offset(kind, "fields"), at_raw = slot_offset(kind, "raw");
    Py_ssize_t at_stamp = slot_offset(kind, "stamp");
    if (at_fields < 0 || at_raw < 0 || at_stamp < 0)
        goto done;
    const char *data = body.buf, *end = data + body.len;
    Py_ssize_t count = 0;
    for (const char *p = data; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++)
        count++;
    if (end > data && end[-1] != '\n') {
        PyErr_SetString(PyExc_ValueError, "prepared logs must end in a newline");
        goto done;
    }
    if (stamps != Py_None && (!PyList_Check(stamps) || PyList_GET_SIZE(stamps) != count)) {
        PyErr_Format(PyExc_ValueError, "%zd prepared logs with %zd timestamps", count,
                     PyList_Check(stamps) ? PyList_GET_SIZE(stamps) : (Py_ssize_t)-1);
        goto done;
    }
    if ((out = PyList_New(count)) == NULL)
        goto done;
    const char *start = data;
    for (Py_ssize_t i = 0; i < count; i++) {
        const char *stop = memchr(start, '\n', (size_t)(end - start));
        PyObject *event = kind->tp_alloc(kind, 0);
        PyObject *raw = event ? PyBytes_FromStringAndSize(start, stop - start) : NULL;
        if (raw == NULL) {
            Py_XDECREF(event);
            Py_CLEAR(out);
            goto done;
        }
        *(PyObject **)((char *)event + at_fields) = Py_NewRef(fields);
        *(PyObject **)((char *)event + at_raw) = raw;
        *(PyObject **)((char *)event + at_stamp) = Py_NewRef(stamps == Py_None ? Py_None : PyList_GET_ITEM(stamps, i));
        PyList_SET_ITEM(out, i, event);
        start = stop + 1;
    }
done:
    PyBuffer_Release(&body);
    return out;
}

/* Reads events' raw bytes: at the slot's offset for `kind` (Event) and every subclass inheriting
 * the slot, by attribute for any other. */
typedef struct {
    PyTypeObject *kind, *known;
    Py_ssize_t at;
    PyObject *name, *slot;
} raw_reader;

static int raw_reader_open(raw_reader *reader, PyTypeObject *kind) {
    reader->kind = reader->known = kind;
    reader->slot = NULL;
    if ((reader->at = slot_offset(kind, "raw")) < 0 || (reader->name = PyUnicode_InternFromString("raw")) == NULL)
        return -1;
    if ((reader->slot = PyObject_GetAttr((PyObject *)kind, reader->name)) == NULL) {
        Py_DECREF(reader->name);
        return -1;
    }
    return 0;
}

static void raw_reader_close(raw_reader *reader) {
    Py_DECREF(reader->slot);
    Py_DECREF(reader->name);
}

/* An event's raw bytes (a new reference), or NULL with an error. */
static PyObject *raw_read(raw_reader *reader, PyObject *event) {
    PyTypeObject *type = Py_TYPE(event);
    PyObject *raw;
    if (type != reader->known && PyType_IsSubtype(type, reader->kind) &&
        _PyType_Lookup(type, reader->name) == reader->slot)
        reader->known = type; /* the same slot: read it in place */
    if (type == reader->known) {
        raw = *(PyObject **)((char *)event + reader->at);
        Py_XINCREF(raw);
    } else if ((raw = PyObject_GetAttr(event, reader->name)) == NULL)
        return NULL;
    if (raw == NULL || !PyBytes_Check(raw)) {
        Py_XDECREF(raw);
        PyErr_SetString(PyExc_TypeError, "an event's raw is not bytes");
        return NULL;
    }
    return raw;
}

/* shipper/event.py's `wire_ends` and `wire_size`: each event's raw bytes plus a newline, as running
 * totals (a list) or their sum (an int). Three iterator layers in Python cost ~0.4 us an event, on
 * every batch cut and every request framed. */
static PyObject *wire_ends(PyObject *self, PyObject *args) {
    PyTypeObject *kind;
    PyObject *events;
    int ends;
    raw_reader reader;
    if (!PyArg_ParseTuple(args, "O!O!p:wire_ends", &PyType_Type, &kind, &PyList_Type, &events, &ends) ||
        raw_reader_open(&reader, kind) < 0)
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(events), total = 0;
    PyObject *out = ends ? PyList_New(count) : NULL;
    if (ends && out == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *raw = raw_read(&reader, PyList_GET_ITEM(events, i));
        if (raw == NULL)
            goto error;
        total += PyBytes_GET_SIZE(raw) + 1;
        Py_DECREF(raw);
        if (ends) {
            PyObject *end = PyLong_FromSsize_t(total);
            if (end == NULL)
                goto error;
            PyList_SET_ITEM(out, i, end);
        }
    }
    raw_reader_close(&reader);
    return ends ? out : PyLong_FromSsize_t(total);
error:
    raw_reader_close(&reader);
    Py_XDECREF(out);
    return NULL;
}

/* shipper/encoding.py's `framed`: `opening`, the events' raw bytes between `separator`s, `closing`,
 * in one allocation (a request body: no list of the raws, no copy but the body's). */
static PyObject *framed(PyObject *self, PyObject *args) {
    PyTypeObject *kind;
    PyObject *events, *out = NULL;
    Py_buffer opening, separator, closing;
    raw_reader reader;
    if (!PyArg_ParseTuple(args, "O!O!y*y*y*:framed", &PyType_Type, &kind, &PyList_Type, &events, &opening, &separator,
                          &closing))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(events), total = opening.len + closing.len, read = 0;
    PyObject **raws = PyMem_Malloc(sizeof(PyObject *) * (size_t)(count ? count : 1));
    if (raws == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (raw_reader_open(&reader, kind) < 0)
        goto done;
    for (; read < count; read++) {
        if ((raws[read] = raw_read(&reader, PyList_GET_ITEM(events, read))) == NULL)
            break;
        total += PyBytes_GET_SIZE(raws[read]) + (read ? separator.len : 0);
    }
    raw_reader_close(&reader);
    if (read == count && (out = PyBytes_FromStringAndSize(NULL, total)) != NULL) {
        char *w = PyBytes_AS_STRING(out);
        memcpy(w, opening.buf, (size_t)opening.len);
        w += opening.len;
        for (Py_ssize_t i = 0; i < count; i++) {
            if (i) {
                memcpy(w, separator.buf, (size_t)separator.len);
                w += separator.len;
            }
            memcpy(w, PyBytes_AS_STRING(raws[i]), (size_t)PyBytes_GET_SIZE(raws[i]));
            w += PyBytes_GET_SIZE(raws[i]);
        }
        memcpy(w, closing.buf, (size_t)closing.len);
    }
    for (Py_ssize_t i = 0; i < read; i++)
        Py_DECREF(raws[i]);
done:
    PyMem_Free(raws);
    PyBuffer_Release(&opening);
    PyBuffer_Release(&separator);
    PyBuffer_Release(&closing);
    return out;
}

/* Escaping as orjson escapes a string: quote, backslash, control characters; UTF-8 kept as is. */
static const char short_escape[32] = {[8] = 'b', [9] = 't', [10] = 'n', [12] = 'f', [13] = 'r'};

/* A high bit in each of 8 bytes that is '"', '\\' or a control character (the lowest one exact:
 * a borrow only marks bytes above a true one). */
static uint64_t eight_to_escape(uint64_t x) {
    uint64_t quote = x ^ BYTES('"'), backslash = x ^ BYTES('\\');
    return (((x - BYTES(0x20)) & ~x) | ((quote - BYTES(1)) & ~quote) | ((backslash - BYTES(1)) & ~backslash)) &
           BYTES(0x80);
}

/* What escaping adds to a byte. */
static Py_ssize_t escape_growth(unsigned c) {
    if (c == '"' || c == '\\')
        return 1;
    return c < 0x20 ? (short_escape[c] ? 1 : 5) : 0;
}

static Py_ssize_t escaped_size(const unsigned char *p, Py_ssize_t size) {
    Py_ssize_t out = size, i = 0;
    while (size - i >= 8) {
        uint64_t eight, marks;
        memcpy(&eight, p + i, 8);
        marks = eight_to_escape(eight);
        if (marks == 0) {
            i += 8;
            continue;
        }
        i += __builtin_ctzll(marks) >> 3;
        out += escape_growth(p[i++]);
    }
    for (; i < size; i++)
        out += escape_growth(p[i]);
    return out;
}

static char *escape_byte(char *w, unsigned c) {
    static const char hex[] = "0123456789abcdef";
    *w++ = '\\';
    if (c == '"' || c == '\\') {
        *w++ = (char)c;
    } else if (short_escape[c]) {
        *w++ = short_escape[c];
    } else {
        memcpy(w, "u00", 3);
        w[3] = hex[c >> 4];
        w[4] = hex[c & 15];
        w += 5;
    }
    return w;
}

static char *escape_into(char *w, const unsigned char *p, Py_ssize_t size) {
    Py_ssize_t i = 0;
    while (size - i >= 8) { /* plain runs 8 bytes a step, up to the next byte to escape */
        uint64_t eight, marks;
        memcpy(&eight, p + i, 8);
        marks = eight_to_escape(eight);
        if (marks == 0) {
            memcpy(w, p + i, 8);
            w += 8;
            i += 8;
            continue;
        }
        int plain = __builtin_ctzll(marks) >> 3;
        memcpy(w, p + i, (size_t)plain);
        w += plain;
        i += plain;
        w = escape_byte(w, p[i++]);
    }
    for (; i < size; i++)
        w = escape_growth(p[i]) ? escape_byte(w, p[i]) : (*w = (char)p[i], w + 1);
    return w;
}

typedef struct {
    PyObject *raw, *metadata; /* borrowed */
    long long ns;
} loki_entry;

/* `value` in decimal at `out` (at most 20 bytes); how many were written. */
static int decimal_into(char *out, long long value) {
    char reversed[24];
    int n = 0, k = 0;
    unsigned long long rest = value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value;
    do {
        reversed[n++] = (char)('0' + rest % 10);
        rest /= 10;
    } while (rest);
    if (value < 0)
        out[k++] = '-';
    while (n)
        out[k++] = reversed[--n];
    return k;
}

/* sinks/loki_push.py's `Framer.entries`: a stream's entries as one JSON text, each
 * `["<ns>","<line>"<metadata>],`, and where each ends; the lines come escaped (made where the
 * events were parsed). Two passes: sizes (the ends), then the bytes into one buffer. In Python
 * the entry's pieces, an orjson call and a join cost ~2 us an entry. */
static PyObject *loki_entries(PyObject *self, PyObject *args) {
    PyTypeObject *kind;
    PyObject *events;
    if (!PyArg_ParseTuple(args, "O!O!:loki_entries", &PyType_Type, &kind, &PyList_Type, &events))
        return NULL;
    Py_ssize_t at_raw = slot_offset(kind, "raw"), at_stamp = slot_offset(kind, "stamp");
    if (at_raw < 0 || at_stamp < 0)
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(events), total = 0;
    loki_entry *entries = PyMem_Malloc(sizeof(loki_entry) * (size_t)(count ? count : 1));
    PyObject *ends = PyList_New(count), *body = NULL;
    if (entries == NULL || ends == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *event = PyList_GET_ITEM(events, i);
        if (Py_TYPE(event) != kind && !PyObject_TypeCheck(event, kind)) {
            PyErr_SetString(PyExc_TypeError, "a Loki entry is not a prepared event");
            goto error;
        }
        PyObject *raw = *(PyObject **)((char *)event + at_raw), *stamp = *(PyObject **)((char *)event + at_stamp);
        if (raw == NULL || !PyBytes_Check(raw) || stamp == NULL || !PyTuple_Check(stamp) || PyTuple_GET_SIZE(stamp) != 3 ||
            !PyLong_Check(PyTuple_GET_ITEM(stamp, 1)) || !PyBytes_Check(PyTuple_GET_ITEM(stamp, 2))) {
            PyErr_SetString(PyExc_TypeError, "a Loki entry needs bytes and a (stream, ns, metadata) stamp");
            goto error;
        }
        long long ns = PyLong_AsLongLong(PyTuple_GET_ITEM(stamp, 1));
        if (ns == -1 && PyErr_Occurred())
            goto error;
        entries[i] = (loki_entry){raw, PyTuple_GET_ITEM(stamp, 2), ns};
        char digits[24];
        Py_ssize_t size = PyBytes_GET_SIZE(raw);
        total += decimal_into(digits, ns) + PyBytes_GET_SIZE(entries[i].metadata) + size +
                 (Py_ssize_t)sizeof "[\"\",\"\"]," - 1;
        PyObject *end = PyLong_FromSsize_t(total);
        if (end == NULL)
            goto error;
        PyList_SET_ITEM(ends, i, end);
    }
    body = PyBytes_FromStringAndSize(NULL, total);
    if (body == NULL)
        goto error;
    char *w = PyBytes_AS_STRING(body);
    for (Py_ssize_t i = 0; i < count; i++) {
        const loki_entry *entry = &entries[i];
        memcpy(w, "[\"", 2);
        w += 2;
        w += decimal_into(w, entry->ns);
        memcpy(w, "\",\"", 3);
        w += 3;
        Py_ssize_t size = PyBytes_GET_SIZE(entry->raw);
        memcpy(w, PyBytes_AS_STRING(entry->raw), (size_t)size);
        w += size;
        *w++ = '"';
        Py_ssize_t meta = PyBytes_GET_SIZE(entry->metadata);
        memcpy(w, PyBytes_AS_STRING(entry->metadata), (size_t)meta);
        w += meta;
        *w++ = ']';
        *w++ = ',';
    }
    PyMem_Free(entries);
    return Py_BuildValue("(NN)", body, ends);
error:
    PyMem_Free(entries);
    Py_XDECREF(ends);
    Py_XDECREF(body);
    return NULL;
}

/* sinks/loki_entries.py's `escaped_lines`: each line of `lines` (each ending in a newline) escaped
 * as a JSON string's contents, a line each. */
static PyObject *escape_lines(PyObject *self, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "lines are bytes");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t size = PyBytes_GET_SIZE(arg);
    /* Newlines separate lines and are kept as they are: `\n` would add one byte each. */
    Py_ssize_t total = escaped_size(data, size) - newlines_in(data, size);
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(out);
    const unsigned char *at = data, *end = data + size, *newline;
    while (at < end) {
        newline = memchr(at, '\n', (size_t)(end - at));
        const unsigned char *stop = newline ? newline : end;
        w = escape_into(w, at, stop - at);
        if (newline)
            *w++ = '\n';
        at = stop + 1;
    }
    return out;
}

/* sinks/cloudwatch_events.py's `log_event_lines`: `{"timestamp":<ms>,"message":"<message>"}` a line,
 * each message (UTF-8 JSON text) escaped as msgspec escapes a string. Decoding each message to a
 * str and encoding a struct of it cost ~2 us an event in Python. */
static PyObject *log_event_lines(PyObject *self, PyObject *args) {
    PyObject *times, *messages;
    if (!PyArg_ParseTuple(args, "O!O!:log_event_lines", &PyList_Type, &times, &PyList_Type, &messages))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(times), total = 0;
    static const char head[] = "{\"timestamp\":", middle[] = ",\"message\":\"", tail[] = "\"}\n";
    if (PyList_GET_SIZE(messages) != count) {
        PyErr_SetString(PyExc_ValueError, "a time for each message");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *message = PyList_GET_ITEM(messages, i), *time = PyList_GET_ITEM(times, i);
        if (!PyBytes_Check(message) || !PyLong_Check(time)) {
            PyErr_SetString(PyExc_TypeError, "times are ints and messages bytes");
            return NULL;
        }
        long long ms = PyLong_AsLongLong(time);
        if (ms == -1 && PyErr_Occurred())
            return NULL;
        char digits[24];
        total += decimal_into(digits, ms) +
                 escaped_size((const unsigned char *)PyBytes_AS_STRING(message), PyBytes_GET_SIZE(message)) +
                 (Py_ssize_t)(sizeof head + sizeof middle + sizeof tail - 3);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *message = PyList_GET_ITEM(messages, i);
        memcpy(w, head, sizeof head - 1);
        w += sizeof head - 1;
        w += decimal_into(w, PyLong_AsLongLong(PyList_GET_ITEM(times, i)));
        memcpy(w, middle, sizeof middle - 1);
        w += sizeof middle - 1;
        w = escape_into(w, (const unsigned char *)PyBytes_AS_STRING(message), PyBytes_GET_SIZE(message));
        memcpy(w, tail, sizeof tail - 1);
        w += sizeof tail - 1;
    }
    return out;
}

/* shipper/bulk.py's `stamp_groups`: events (an object with a `stamp` tuple slot each) by the key
 * at `key_at` of their stamps, in order of first arrival: per key its events and their times (the
 * int at `time_at`), in arrival order, and whether those times never decrease. One pass; in Python
 * the key and time lists, the grouping and the order check took ~0.3 us an event. */
static PyObject *stamp_groups(PyObject *self, PyObject *args) {
    PyObject *events;
    Py_ssize_t key_at, time_at;
    if (!PyArg_ParseTuple(args, "O!nn:stamp_groups", &PyList_Type, &events, &key_at, &time_at))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(events);
    PyObject *index = PyDict_New(), *groups = PyList_New(0), *out = NULL;
    if (index == NULL || groups == NULL)
        goto done;
    Py_ssize_t at_stamp = -1;
    PyTypeObject *known = NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *event = PyList_GET_ITEM(events, i);
        if (Py_TYPE(event) != known) {
            known = Py_TYPE(event);
            if ((at_stamp = slot_offset(known, "stamp")) < 0)
                goto done;
        }
        PyObject *stamp = *(PyObject **)((char *)event + at_stamp);
        if (stamp == NULL || !PyTuple_Check(stamp) || PyTuple_GET_SIZE(stamp) <= Py_MAX(key_at, time_at) || key_at < 0 ||
            time_at < 0 || !PyLong_Check(PyTuple_GET_ITEM(stamp, time_at))) {
            PyErr_SetString(PyExc_TypeError, "an event's stamp lacks its key or its time");
            goto done;
        }
        PyObject *key = PyTuple_GET_ITEM(stamp, key_at), *time = PyTuple_GET_ITEM(stamp, time_at);
        PyObject *group = PyDict_GetItemWithError(index, key); /* borrowed: [key, events, times, ordered] */
        if (group == NULL) {
            if (PyErr_Occurred())
                goto done;
            group = Py_BuildValue("[ON[]O]", key, PyList_New(0), Py_True);
            if (group == NULL || PyDict_SetItem(index, key, group) < 0 || PyList_Append(groups, group) < 0) {
                Py_XDECREF(group);
                goto done;
            }
            Py_DECREF(group);
        }
        PyObject *times = PyList_GET_ITEM(group, 2);
        Py_ssize_t seen = PyList_GET_SIZE(times);
        if (seen && PyList_GET_ITEM(group, 3) == Py_True) {
            int later = PyObject_RichCompareBool(PyList_GET_ITEM(times, seen - 1), time, Py_LE);
            if (later < 0)
                goto done;
            if (!later)
                PyList_SetItem(group, 3, Py_NewRef(Py_False));
        }
        if (PyList_Append(PyList_GET_ITEM(group, 1), event) < 0 || PyList_Append(times, time) < 0)
            goto done;
    }
    Py_ssize_t size = PyList_GET_SIZE(groups);
    if ((out = PyList_New(size)) == NULL)
        goto done;
    for (Py_ssize_t g = 0; g < size; g++) {
        PyObject *group = PyList_AsTuple(PyList_GET_ITEM(groups, g));
        if (group == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, g, group);
    }
done:
    Py_XDECREF(index);
    Py_XDECREF(groups);
    return out;
}

/* shipper/lines.py's `line_ends`: where each line of NDJSON `body` ends, its newline included
 * (offsets into `body`): what `Lines` reads a line's bytes and a run's wire size by. */
static PyObject *line_ends(PyObject *self, PyObject *arg) {
    Py_buffer body;
    if (PyObject_GetBuffer(arg, &body, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *data = body.buf, *end = data + body.len;
    PyObject *out = NULL;
    if (end > data && end[-1] != '\n') {
        PyErr_SetString(PyExc_ValueError, "prepared logs must end in a newline");
        goto done;
    }
    if ((out = PyList_New(newlines_in((const unsigned char *)data, body.len))) == NULL)
        goto done;
    Py_ssize_t i = 0;
    for (const char *p = data; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++) {
        PyObject *at = PyLong_FromSsize_t(p + 1 - data);
        if (at == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i++, at);
    }
done:
    PyBuffer_Release(&body);
    return out;
}

/* shipper/lines.py's `framed_lines`: `opening`, the lines of NDJSON pieces (bytes-like, each
 * ending in a newline) between `separator`s, `closing`, in one allocation: each piece copied
 * whole, then each newline but the last turned into the separator where it lies (one byte). */
static PyObject *framed_lines(PyObject *self, PyObject *args) {
    PyObject *pieces, *out = NULL;
    Py_buffer opening, separator, closing;
    if (!PyArg_ParseTuple(args, "y*O!y*y*:framed_lines", &opening, &PyList_Type, &pieces, &separator, &closing))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(pieces), held = 0, total = opening.len + closing.len;
    Py_buffer *views = PyMem_Calloc((size_t)(count ? count : 1), sizeof(Py_buffer));
    if (views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (separator.len != 1) {
        PyErr_SetString(PyExc_ValueError, "the separator must be one byte");
        goto done;
    }
    for (; held < count; held++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(pieces, held), &views[held], PyBUF_SIMPLE) < 0)
            goto done;
        const char *data = views[held].buf;
        if (views[held].len && data[views[held].len - 1] != '\n') {
            held++;
            PyErr_SetString(PyExc_ValueError, "prepared logs must end in a newline");
            goto done;
        }
        total += views[held].len;
    }
    Py_ssize_t lines = total - opening.len - closing.len;
    total -= lines > 0; /* the last newline goes: the closing follows the last line */
    if ((out = PyBytes_FromStringAndSize(NULL, total)) == NULL)
        goto done;
    char *w = PyBytes_AS_STRING(out), *body;
    memcpy(w, opening.buf, (size_t)opening.len);
    body = w += opening.len;
    Py_ssize_t left = lines > 0 ? lines - 1 : 0; /* never the last newline: the body may be just that */
    for (Py_ssize_t i = 0; i < count && left > 0; i++) {
        Py_ssize_t size = Py_MIN(views[i].len, left);
        memcpy(w, views[i].buf, (size_t)size);
        w += size;
        left -= size;
    }
    char sep = *(const char *)separator.buf;
    for (char *p = body; (p = memchr(p, '\n', (size_t)(w - p))) != NULL; p++)
        *p = sep;
    memcpy(w, closing.buf, (size_t)closing.len);
done:
    for (Py_ssize_t i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyBuffer_Release(&opening);
    PyBuffer_Release(&separator);
    PyBuffer_Release(&closing);
    return out;
}

/* shipper/workers.py's reply buffers: a bytearray of `size` bytes left as malloc gives them
 * (bytearray(size) zeroes them: ~2% of the agent's CPU on the CloudWatch bench), each byte then
 * written by the read that fills it. */
static PyObject *unfilled(PyObject *self, PyObject *arg) {
    Py_ssize_t size = PyLong_AsSsize_t(arg);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "a negative size");
        return NULL;
    }
    return PyByteArray_FromStringAndSize(NULL, size);
}

/* shipper/lines.py's `pack_stamps`: stamps that are all 2-tuples of an int (at 0 for all, or at
 * 1 for all) and one same key: (time_at, key, the times as int64 bytes, whether they never
 * decrease); else the list as it is. A worker's reply carries them so: no tuple a log to write,
 * read and free. */
static PyObject *pack_stamps(PyObject *self, PyObject *arg) {
    if (!PyList_Check(arg) || PyList_GET_SIZE(arg) == 0)
        return Py_NewRef(arg);
    Py_ssize_t count = PyList_GET_SIZE(arg);
    PyObject *first = PyList_GET_ITEM(arg, 0);
    if (!PyTuple_Check(first) || PyTuple_GET_SIZE(first) != 2)
        return Py_NewRef(arg);
    int time_at = PyLong_CheckExact(PyTuple_GET_ITEM(first, 0)) ? 0 : 1;
    PyObject *key = PyTuple_GET_ITEM(first, 1 - time_at);
    PyObject *times = PyBytes_FromStringAndSize(NULL, count * 8);
    if (times == NULL)
        return NULL;
    long long *out = (long long *)PyBytes_AS_STRING(times), last = 0;
    int ordered = 1;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *stamp = PyList_GET_ITEM(arg, i);
        if (!PyTuple_Check(stamp) || PyTuple_GET_SIZE(stamp) != 2 || !PyLong_CheckExact(PyTuple_GET_ITEM(stamp, time_at)))
            goto as_is;
        PyObject *own = PyTuple_GET_ITEM(stamp, 1 - time_at);
        if (own != key) {
            if (Py_TYPE(own) != Py_TYPE(key) || !PyUnicode_Check(key))
                goto as_is; /* only a str key is compared by value: others must be the same object */
            int same = PyObject_RichCompareBool(own, key, Py_EQ);
            if (same < 0) {
                Py_DECREF(times);
                return NULL;
            }
            if (!same)
                goto as_is;
        }
        long long value = PyLong_AsLongLong(PyTuple_GET_ITEM(stamp, time_at));
        if (value == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            goto as_is;
        }
        if (i && value < last)
            ordered = 0;
        out[i] = last = value;
    }
    return Py_BuildValue("(iONO)", time_at, key, times, ordered ? Py_True : Py_False);
as_is:
    Py_DECREF(times);
    return Py_NewRef(arg);
}

/* shipper/lines.py's `unpack_stamps`: stamps lo..hi of packed ones, each (time, key) or
 * (key, time) again. */
static PyObject *unpack_stamps(PyObject *self, PyObject *args) {
    int time_at;
    PyObject *key, *out = NULL;
    Py_buffer times;
    Py_ssize_t lo, hi;
    if (!PyArg_ParseTuple(args, "iOy*nn:unpack_stamps", &time_at, &key, &times, &lo, &hi))
        return NULL;
    if (lo < 0 || hi < lo || hi > times.len / 8 || (time_at != 0 && time_at != 1)) {
        PyErr_SetString(PyExc_IndexError, "no stamps in that range");
        goto done;
    }
    const long long *values = (const long long *)times.buf;
    if ((out = PyList_New(hi - lo)) == NULL)
        goto done;
    for (Py_ssize_t i = lo; i < hi; i++) {
        PyObject *time = PyLong_FromLongLong(values[i]), *stamp = time ? PyTuple_New(2) : NULL;
        if (stamp == NULL) {
            Py_XDECREF(time);
            Py_CLEAR(out);
            goto done;
        }
        PyTuple_SET_ITEM(stamp, time_at, time);
        PyTuple_SET_ITEM(stamp, 1 - time_at, Py_NewRef(key));
        PyList_SET_ITEM(out, i - lo, stamp);
    }
done:
    PyBuffer_Release(&times);
    return out;
}

/* sinks/loki_push.py's `Framer._distinct`: entries of a stream (in time order) that share a
 * timestamp with each other or with the stream's newest sent, moved apart by a nanosecond each in
 * arrival order; each moved entry gets a new stamp `(key, ns, metadata)` in its slot. A replayed
 * backlog re-stamped to one millisecond moves nearly every entry: ~0.9 us each in Python. */
static PyObject *distinct_times(PyObject *self, PyObject *args) {
    PyObject *events, *key;
    long long last, same;
    if (!PyArg_ParseTuple(args, "O!OLL:distinct_times", &PyList_Type, &events, &key, &last, &same))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(events);
    if (count == 0)
        Py_RETURN_NONE;
    Py_ssize_t at_stamp = slot_offset(Py_TYPE(PyList_GET_ITEM(events, 0)), "stamp");
    if (at_stamp < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *event = PyList_GET_ITEM(events, i);
        if (Py_TYPE(event) != Py_TYPE(PyList_GET_ITEM(events, 0))) {
            PyErr_SetString(PyExc_TypeError, "entries of one type expected");
            return NULL;
        }
        PyObject **slot = (PyObject **)((char *)event + at_stamp);
        PyObject *stamp = *slot;
        if (stamp == NULL || !PyTuple_Check(stamp) || PyTuple_GET_SIZE(stamp) != 3) {
            PyErr_SetString(PyExc_TypeError, "an entry's stamp must be (stream, ns, metadata)");
            return NULL;
        }
        long long ns = PyLong_AsLongLong(PyTuple_GET_ITEM(stamp, 1));
        if (ns == -1 && PyErr_Occurred())
            return NULL;
        if (ns <= last && last - ns < same) {
            ns = last + 1;
            PyObject *moved = Py_BuildValue("(OLO)", key, ns, PyTuple_GET_ITEM(stamp, 2));
            if (moved == NULL)
                return NULL;
            Py_SETREF(*slot, moved);
        }
        if (ns > last)
            last = ns;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(levels, level_from_number, http_fields, second_prefix, event_type): the Python collaborators."},
    {"normalize_records", normalize_records, METH_VARARGS,
     "normalize_records(records, raws, service, source, stream, second, prefix) -> "
     "(events, slow, fresh_before, fresh, second, prefix); see shipper/parsing/pino.py."},
    {"newlines", newlines, METH_O, "newlines(data) -> how many newlines data holds (bytes.count(b'\\n'))."},
    {"trigger_lines", trigger_lines, METH_VARARGS,
     "trigger_lines(data, phones) -> indexes of the lines (split at \\n) holding a redaction trigger word."},
    {"suspect_slots", suspect_slots, METH_VARARGS,
     "suspect_slots(record, phones) -> [(container, key or index)]: the values a redaction walk must judge."},
    {"direct_lines", direct_lines, METH_VARARGS,
     "direct_lines(joined, flagged, forbidden, constants, extra, second, prefix, sink=None) -> "
     "(lines written, slow, fresh_before, fresh, second, prefix, stamps, restamped, cuts, slow_lines, lines); "
     "see shipper/parsing/direct.py."},
    {"encoded_events", encoded_events, METH_VARARGS,
     "encoded_events(kind, fields, body, stamps) -> one `kind` per line of NDJSON `body`; see shipper/event.py."},
    {"wire_ends", wire_ends, METH_VARARGS,
     "wire_ends(kind, events, ends) -> running totals of each raw plus a newline, or their sum; see shipper/event.py."},
    {"framed", framed, METH_VARARGS,
     "framed(kind, events, opening, separator, closing) -> the events' raw bytes framed; see shipper/encoding.py."},
    {"log_event_lines", log_event_lines, METH_VARARGS,
     "log_event_lines(times, messages) -> CloudWatch log events, a line each; see sinks/cloudwatch_events.py."},
    {"escape_lines", escape_lines, METH_O,
     "escape_lines(lines) -> each line escaped as a JSON string's contents; see sinks/loki_entries.py."},
    {"loki_entries", loki_entries, METH_VARARGS,
     "loki_entries(kind, entries) -> (JSON of the entries, where each ends); see sinks/loki_push.py."},
    {"stamp_groups", stamp_groups, METH_VARARGS,
     "stamp_groups(events, key_at, time_at) -> [(key, events, times, ordered)]; see shipper/bulk.py."},
    {"distinct_times", distinct_times, METH_VARARGS,
     "distinct_times(entries, stream, newest, same_ns): equal times of a stream's entries moved apart; see "
     "sinks/loki_push.py."},
    {"line_ends", line_ends, METH_O,
     "line_ends(body) -> where each line of NDJSON body ends, newline included; see shipper/lines.py."},
    {"framed_lines", framed_lines, METH_VARARGS,
     "framed_lines(opening, pieces, separator, closing) -> the pieces' lines framed; see shipper/lines.py."},
    {"unfilled", unfilled, METH_O, "unfilled(size) -> a bytearray of size bytes, not zeroed; see shipper/workers.py."},
    {"pack_stamps", pack_stamps, METH_O,
     "pack_stamps(stamps) -> (time_at, key, int64 times, ordered) when they allow, else stamps; see shipper/lines.py."},
    {"unpack_stamps", unpack_stamps, METH_VARARGS,
     "unpack_stamps(time_at, key, times, lo, hi) -> stamps lo..hi as tuples again; see shipper/lines.py."},
    {"set_level_words", set_level_words, METH_VARARGS,
     "set_level_words({number: word as JSON bytes}): the level words the direct lane writes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "shipper._speedups",
                                    "The pino record fast path in C (see shipper/parsing/pino.py).", -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (intern(&k_level, "level") || intern(&k_time, "time") || intern(&k_msg, "msg") ||
        intern(&k_hostname, "hostname") || intern(&k_level_num, "level_num") || intern(&k_timestamp, "timestamp") ||
        intern(&k_message, "message") || intern(&k_host, "host") || intern(&k_service, "service") ||
        intern(&k_source, "source") || intern(&k_stream, "stream") || intern(&k_http, "http") ||
        intern(&k_req, "req") || intern(&k_res, "res") || intern(&k_method, "method") || intern(&k_url, "url") ||
        intern(&k_status_code_in, "statusCode") || intern(&k_response_time, "responseTime") ||
        intern(&k_status_code, "status_code") || intern(&k_duration_ms, "duration_ms"))
        return NULL;
    scanner_init();
    lane_init();
    return PyModule_Create(&module);
}
