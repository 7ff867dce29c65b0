# server.py: answers each client with the text in the region it sent, in upper case.
#   python server.py <socket-path>
import sys

import shmlink

with shmlink.listen(sys.argv[1]) as server:  # clients of this user (or root) only
    for client in server:  # one client at a time, for brevity
        with client:
            for message in client:  # frozen regions: clients are not trusted
                text = message.regions[0].read()  # a copy
                client.send(text.upper())
