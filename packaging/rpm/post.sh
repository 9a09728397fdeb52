# oxetcd rpm %post: creates /var/lib/oxetcd and /var/log/etcd.log (also without a running
# systemd), reloads systemd, and enables (never starts) the unit on a first install ($1 = 1).
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create oxetcd.conf || :
else
    log_group=adm
    getent group adm >/dev/null || log_group=oxetcd
    install -d -o oxetcd -g oxetcd -m 0700 /var/lib/oxetcd
    [ -e /var/log/etcd.log ] || install -o oxetcd -g "$log_group" -m 0640 /dev/null /var/log/etcd.log
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl enable oxetcd.service >/dev/null 2>&1 || :
fi
exit 0
