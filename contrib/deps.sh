# Sourced by contrib/check, contrib/demo and contrib/bench/run: installs the
# Debian 12 packages mailfs needs to build, test and demonstrate, if missing.

MAILFS_PACKAGES=(
	build-essential meson ninja-build pkg-config
	libfuse3-dev fuse3 libssl-dev openssl ca-certificates
	liblmdb-dev lmdb-utils libcmocka-dev zlib1g-dev libzstd-dev
	dovecot-imapd dovecot-pop3d
	rsync attr python3 procps
	clang libclang-rt-14-dev
)

mailfs_install_deps() {
	local missing=() p
	for p in "${MAILFS_PACKAGES[@]}" "$@"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
			grep -q 'install ok installed'; then
			missing+=("$p")
		fi
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	echo "installing: ${missing[*]}"
	local sudo=
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends "${missing[@]}"
}
