#ifndef WARD_CLIBEVENT_H
#define WARD_CLIBEVENT_H
/* These system headers must precede event2/: libevent's config defines _GNU_SOURCE. */
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/select.h>
#include <sys/time.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <sys/inotify.h>
#include <event2/event.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <event2/util.h>
#endif
