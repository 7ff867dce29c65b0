# child.py: started by a Node parent with spawnWithEndpoint; adds 1 to the first byte of
# each frame, in place, and hands the frame back.
import shmlink

parent = shmlink.inherited()  # the socket SHMLINK_FD names
for message in parent:  # ends when the parent closes
    frame = message.regions[0]
    with memoryview(frame) as view:  # zero copy: the parent's memory
        view[0] += 1
    parent.send(b"done", transfer=[frame])
