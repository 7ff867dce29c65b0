/*
 * codes.c - prints libshmlink's error codes, one a line, in the order of its enum: the
 * string shmlink_code_string() gives for each value from the first error on, until the
 * library says the value is not a code. For __test__/errors.spec.ts, which compares them
 * with docs/ERRORS.md and with the enum's names in shmlink.h.
 */
#include <shmlink.h>

#include <stdio.h>
#include <string.h>

int main(void)
{
    for (int code = SHMLINK_ERR_CLOSED;; code++) {
        const char *text = shmlink_code_string((shmlink_code)code);
        if (strcmp(text, "ERR_SHMLINK_UNKNOWN") == 0)
            return 0;
        puts(text);
    }
}
