"""The Python side of the numpy example: started by parent.js with spawnWithEndpoint().

For each frame the parent hands over, it sums the red channel and inverts every byte in
place with numpy, straight in the shared memory (numpy.frombuffer copies nothing), then
hands the frame back with the sum as the payload.
"""

import numpy

import shmlink

WIDTH, HEIGHT = 1920, 1080

with shmlink.inherited() as endpoint:  # SHMLINK_FD names the socket; never assume fd 3
    for message in endpoint:  # until the parent closes the connection
        region = message.regions[0]
        frame = numpy.frombuffer(region, dtype=numpy.uint8).reshape(HEIGHT, WIDTH, 4)
        red = int(frame[..., 0].sum(dtype=numpy.uint64))
        numpy.invert(frame, out=frame)
        del frame  # no view of the region may outlive the hand-back
        endpoint.send(str(red), transfer=[region])
