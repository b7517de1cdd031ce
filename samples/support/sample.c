/* Writing expectation lines (see sample.h for the grammar).
 *
 * A line is assembled in a buffer and written with a single write(2): writes
 * of at most PIPE_BUF bytes are atomic on pipes and O_APPEND makes them atomic
 * on files, so lines from several threads and processes never interleave.
 * No stdio: a sample may print from a signal handler or a vfork child.
 */
#define _GNU_SOURCE
#include "sample.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int out_fd = STDOUT_FILENO;

__attribute__((constructor)) static void open_output(void)
{
	const char *path = getenv("SAMPLE_OUT");

	if (path == NULL || *path == '\0')
		return;
	out_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (out_fd < 0) {
		perror(path);
		_exit(125);
	}
}

struct line {
	char text[PIPE_BUF];
	size_t len;
};

static void put_str(struct line *line, const char *text)
{
	size_t n = strlen(text);

	if (n > sizeof(line->text) - 1 - line->len)
		abort(); /* a sample's own bug: lines are short by design */
	memcpy(line->text + line->len, text, n);
	line->len += n;
}

static void put_unsigned(struct line *line, unsigned long long value)
{
	char digits[24];
	char *p = digits + sizeof(digits) - 1;

	*p = '\0';
	do
		*--p = (char)('0' + value % 10);
	while ((value /= 10) != 0);
	put_str(line, p);
}

static void put_signed(struct line *line, long long value)
{
	if (value < 0) {
		put_str(line, "-");
		put_unsigned(line, -(unsigned long long)value);
	} else {
		put_unsigned(line, (unsigned long long)value);
	}
}

/* The value a tracer decodes: the low size bytes, extended by sign. */
static void put_arg(struct line *line, const struct sample_arg *arg)
{
	char real[64];
	unsigned shift = 64 - 8 * arg->size;

	if (!arg->is_real && (arg->size == 0 || arg->size > 8))
		abort(); /* integers are 1..8 bytes; wider values are REAL */
	if (arg->is_real) {
		snprintf(real, sizeof(real), "%.17Lg", arg->real);
		put_str(line, real);
	} else if (arg->is_signed) {
		put_signed(line, (long long)(arg->bits << shift) >> shift);
	} else {
		put_unsigned(line, arg->bits << shift >> shift);
	}
}

static void begin(struct line *line, const char *kind)
{
	line->len = 0;
	put_str(line, kind);
	put_str(line, " ");
	put_signed(line, getpid());
	put_str(line, " ");
	put_signed(line, gettid());
}

static void finish(struct line *line)
{
	const char *p = line->text;
	ssize_t n;

	put_str(line, "\n");
	while (p < line->text + line->len) {
		n = write(out_fd, p, (size_t)(line->text + line->len - p));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			_exit(125);
		p += n;
	}
}

void sample_line(const char *kind, const char *word, size_t nargs, const struct sample_arg *args)
{
	struct line line;
	int saved_errno = errno;

	begin(&line, kind);
	if (word != NULL) {
		put_str(&line, " ");
		put_str(&line, word);
	}
	for (size_t i = 0; i < nargs; i++) {
		put_str(&line, " ");
		put_arg(&line, &args[i]);
	}
	finish(&line);
	errno = saved_errno;
}

void sample_sema(const char *probe, const volatile unsigned short *semaphore)
{
	SAMPLE_LINE("sema", probe, UNSIGNED((uintptr_t)semaphore, sizeof(void *)),
		    UNSIGNED(*semaphore, sizeof(*semaphore)));
}

void sample_text(const char *text)
{
	struct line line;

	begin(&line, "text");
	put_str(&line, " ");
	put_unsigned(&line, (uintptr_t)text);
	put_str(&line, " ");
	put_str(&line, text);
	finish(&line);
}

void sample_sync(const char *label)
{
	struct line line;
	const char *wait = getenv("SAMPLE_SYNC");
	char c;
	ssize_t n;

	begin(&line, "sync");
	put_str(&line, " ");
	put_str(&line, label);
	finish(&line);
	if (wait == NULL || *wait == '\0')
		return;
	do
		n = read(STDIN_FILENO, &c, 1);
	while ((n == 1 && c != '\n') || (n < 0 && errno == EINTR));
}

long sample_count_arg(int argc, char **argv, int index, long fallback)
{
	char *end;
	long value;

	if (index >= argc)
		return fallback;
	errno = 0;
	value = strtol(argv[index], &end, 10);
	if (errno != 0 || *end != '\0' || end == argv[index] || value < 0) {
		fprintf(stderr, "%s: not a count: %s\n", argv[0], argv[index]);
		exit(2);
	}
	return value;
}
