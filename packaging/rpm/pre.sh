# oxetcd rpm %pre: creates the oxetcd system user before the files owned by it are installed.
if command -v systemd-sysusers >/dev/null 2>&1; then
    printf '%s\n' 'u oxetcd - "oxetcd key-value store" /var/lib/oxetcd /usr/sbin/nologin' \
        | systemd-sysusers --replace=/usr/lib/sysusers.d/oxetcd.conf - || :
fi
if ! getent passwd oxetcd >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/oxetcd --no-create-home \
        --shell /usr/sbin/nologin --comment "oxetcd key-value store" oxetcd
fi
exit 0
