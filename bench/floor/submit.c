/* The floor for a submit: a C program that sends a prepared `POST /v1/jobs` request (the body
 * `ravel run` would send, read from the file named by argv[2]) to the daemon's socket (argv[1])
 * and reads the answer. No parsing, no JSON building: what any client of this daemon must pay.
 * Exits 0 on a 200 answer. Built and run by bench/floor.sh. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
    static char req[65536], resp[4096];
    if (argc != 3) return 2;
    int f = open(argv[2], O_RDONLY);
    if (f < 0) return 2;
    ssize_t n = read(f, req, sizeof req);
    close(f);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    if (n <= 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0 || write(s, req, n) != n) return 1;
    ssize_t got = 0, k;
    while (got < (ssize_t)sizeof resp - 1 && (k = read(s, resp + got, sizeof resp - 1 - got)) > 0) got += k;
    resp[got] = 0;
    return strncmp(resp, "HTTP/1.1 200", 12) == 0 ? 0 : 1;
}
