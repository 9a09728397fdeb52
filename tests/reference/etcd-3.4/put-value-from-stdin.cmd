etcdctl --endpoints=http://127.0.0.1:22379 put stdinkey
exit: 0
stdin:
from stdin
