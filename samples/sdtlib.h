/* libsdtlib.so: probes living in a shared library (see sdtlib.c). */
#ifndef SDTLIB_H
#define SDTLIB_H

long sdtlib_call(int n, const char *who);
typedef long sdtlib_call_fn(int n, const char *who);

#endif
