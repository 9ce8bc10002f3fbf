# shellcheck shell=bash
#
# devstack/plugin.sh - DevStack plugin for lvmcoord
#
# Enable it on the controller and on every compute subnode:
#
#   enable_plugin lvmcoord https://opendev.org/openstack/lvmcoord
#
# One node (LVMCOORD_SHARED_LU_CREATE=True, by default the node running
# c-vol) plays the SAN: it exports a sparse file over iSCSI (LIO) and puts
# the PV and the VG on it. Every node, that one included, logs in to the LU
# and runs lvmcoordd against devstack's etcd. Phases:
#
#   stack pre-install  OS packages
#   stack install      the lvmcoord Python package
#   stack post-config  LVM settings, the shared LU and VG, lvmcoord.conf,
#                      lvmcoordd (before cinder-volume and nova-compute start)
#   stack extra        volume type, "lvmcoord doctor"
#   stack test-config  tempest options
#   unstack            stop lvmcoordd, take the shared LU apart
#   clean              what unstack does, plus configuration and state
#
# Devstack's globals used here (STACK_USER, CINDER_CONF, TEMPEST_CONFIG,
# REGION_NAME, ENABLE_DEBUG_LOG_LEVEL) come from stackrc and lib/*; the
# LVMCOORD_* ones from devstack/settings.

# Save trace setting
_XTRACE_LVMCOORD=$(set +o | grep xtrace)
set -o xtrace

# The Cinder backend hook (configure_cinder_backend_lvmcoord) must exist
# before stack.sh calls configure_cinder, which happens after pre-install.
# shellcheck source=lib/cinder_backends/lvmcoord
source "$LVMCOORD_DIR/devstack/lib/cinder_backends/lvmcoord"


# Helpers
# -------

# True on the node that creates the LU, the PV and the VG.
function _lvmcoord_is_creator {
    [[ "$LVMCOORD_SHARED_LU_CREATE" == "True" ]]
}

# iscsiadm on this node's record for the shared LU.
function _lvmcoord_iscsiadm_node {
    sudo iscsiadm -m node -T "$LVMCOORD_ISCSI_IQN" -p "$LVMCOORD_ISCSI_PORTAL" "$@"
}

function _lvmcoord_iscsi_logged_in {
    # "tcp: [1] 10.0.0.1:3260,1 iqn.2010-10.org.openstack:x (non-flash)"
    sudo iscsiadm -m session 2>/dev/null | awk \
        -v iqn="$LVMCOORD_ISCSI_IQN" -v portal="$LVMCOORD_ISCSI_PORTAL," \
        '$4 == iqn && index($3, portal) == 1 {found = 1} END {exit !found}'
}

function _lvmcoord_vg_visible {
    sudo vgs "$LVMCOORD_VG_NAME" >/dev/null 2>&1
}

# LVM >= 2.03.12 may restrict itself to /etc/lvm/devices/system.devices.
function _lvmcoord_devicesfile_enabled {
    [[ "$(sudo lvmconfig --type full devices/use_devicesfile 2>/dev/null)" == "use_devicesfile=1" ]]
}

# _lvmcoord_join ", " a b c  ->  a, b, c
function _lvmcoord_join {
    local sep=$1 out="" item
    shift
    for item in "$@"; do
        out+="${out:+$sep}$item"
    done
    echo "$out"
}

function _lvmcoord_wait_for_device {
    local deadline=$((SECONDS + LVMCOORD_DEVICE_TIMEOUT))
    while [[ ! -e "$LVMCOORD_LU_DEVICE" ]]; do
        if (( SECONDS >= deadline )); then
            die $LINENO "$LVMCOORD_LU_DEVICE did not appear after the iSCSI login"
        fi
        sleep 1
        _lvmcoord_iscsiadm_node --rescan >/dev/null
        sudo udevadm settle
    done
}


# Installation
# ------------

function install_lvmcoord_packages {
    if is_ubuntu; then
        install_package lvm2 open-iscsi
        if _lvmcoord_is_creator; then
            # Same workaround as lib/cinder: targetcli-fb needs /etc/target.
            sudo mkdir -p /etc/target
            install_package targetcli-fb
        fi
    else
        install_package lvm2 iscsi-initiator-utils
        if _lvmcoord_is_creator; then
            install_package targetcli
        fi
    fi
}

function install_lvmcoord {
    setup_develop "$LVMCOORD_DIR"
}


# LVM settings for the shared VG
# ------------------------------

# The block appended to this node's lvm.conf: a devices filter accepting
# the shared LU (by its stable name) and the PVs the node already has, and
# an auto-activation list naming every VG except the shared one, so that
# udev/pvscan never activates a shared LV: only lvmcoordd does, under a lease.
function _lvmcoord_lvm_conf_block {
    local pv vg
    local -a accept=("\"a|^$LVMCOORD_LU_DEVICE\$|\"") autoactivate=()

    while read -r pv vg; do
        if [[ -n "$pv" && "$vg" != "$LVMCOORD_VG_NAME" ]]; then
            accept+=("\"a|^$pv\$|\"")
        fi
    done < <(sudo pvs --noheadings -o pv_name,vg_name 2>/dev/null)
    while read -r vg; do
        if [[ -n "$vg" && "$vg" != "$LVMCOORD_VG_NAME" ]]; then
            autoactivate+=("\"$vg\"")
        fi
    done < <(sudo vgs --noheadings -o vg_name 2>/dev/null)

    echo "# BEGIN lvmcoord: shared VG $LVMCOORD_VG_NAME (devstack plugin)"
    if [[ "$LVMCOORD_LVM_FILTER" == "True" ]]; then
        echo "devices {"
        echo "    filter = [ $(_lvmcoord_join ', ' "${accept[@]}" '"r|.*|"') ]"
        echo "}"
    fi
    echo "activation {"
    echo "    auto_activation_volume_list = [ $(_lvmcoord_join ', ' "${autoactivate[@]}") ]"
    echo "}"
    echo "# END lvmcoord"
}

function _lvmcoord_remove_lvm_conf_block {
    if [[ -f "$LVMCOORD_LVM_CONF" ]]; then
        sudo sed -i '/^# BEGIN lvmcoord/,/^# END lvmcoord/d' "$LVMCOORD_LVM_CONF"
    fi
}

# configure_lvmcoord_lvm - runs before the iSCSI login, so the LU's LVs
# are never auto-activated, not even by the udev event of the login.
function configure_lvmcoord_lvm {
    local block
    _lvmcoord_remove_lvm_conf_block
    block=$(_lvmcoord_lvm_conf_block)
    echo "$block" | sudo tee -a "$LVMCOORD_LVM_CONF" >/dev/null
    echo_summary "lvm.conf for the shared VG: $(echo "$block" | grep -v '^#' | tr -s ' \n' ' ')"
}


# The shared LU
# -------------

# create_lvmcoord_target - the "SAN": a sparse file exported by LIO.
function create_lvmcoord_target {
    local tpg=/iscsi/$LVMCOORD_ISCSI_IQN/tpg1

    mkdir -p "$(dirname "$LVMCOORD_BACKING_FILE")"
    if [[ ! -f "$LVMCOORD_BACKING_FILE" ]]; then
        truncate -s "$LVMCOORD_BACKING_FILE_SIZE" "$LVMCOORD_BACKING_FILE"
    fi
    if ! sudo targetcli "/backstores/fileio/$LVMCOORD_BACKSTORE_NAME" ls >/dev/null 2>&1; then
        sudo targetcli /backstores/fileio create "name=$LVMCOORD_BACKSTORE_NAME" \
            "file_or_dev=$LVMCOORD_BACKING_FILE" write_back=false
    fi
    if ! sudo targetcli "/iscsi/$LVMCOORD_ISCSI_IQN" ls >/dev/null 2>&1; then
        sudo targetcli /iscsi create "$LVMCOORD_ISCSI_IQN"
        # targetcli may add a 0.0.0.0:3260 portal, which clashes with the
        # portals cinder's lioadm target helper creates: listen on one address.
        if sudo targetcli "$tpg/portals/0.0.0.0:3260" ls >/dev/null 2>&1; then
            sudo targetcli "$tpg/portals" delete 0.0.0.0 3260
        fi
        sudo targetcli "$tpg/portals" create "$LVMCOORD_ISCSI_PORTAL_IP" "$LVMCOORD_ISCSI_PORT"
        sudo targetcli "$tpg/luns" create "/backstores/fileio/$LVMCOORD_BACKSTORE_NAME" \
            "lun=$LVMCOORD_ISCSI_LUN"
        # Demo mode: any initiator may log in, as every devstack node is
        # ours. A real SAN does this with zoning and LUN masking.
        sudo targetcli "$tpg" set attribute authentication=0 generate_node_acls=1 \
            demo_mode_write_protect=0 cache_dynamic_acls=1
    fi
    sudo targetcli saveconfig
}

# lvmcoord_iscsi_login - every node, the target's own node included, sees
# the LU as a SCSI disk under whatever name its kernel picks.
function lvmcoord_iscsi_login {
    sudo systemctl start iscsid
    if ! _lvmcoord_iscsiadm_node >/dev/null 2>&1; then
        _lvmcoord_iscsiadm_node -o new
    fi
    _lvmcoord_iscsiadm_node -o update -n node.startup -v automatic
    if ! _lvmcoord_iscsi_logged_in; then
        if ! _lvmcoord_iscsiadm_node --login; then
            die $LINENO "Cannot log in to $LVMCOORD_ISCSI_IQN at $LVMCOORD_ISCSI_PORTAL." \
                "The node with LVMCOORD_SHARED_LU_CREATE=True exports it and must be stacked first."
        fi
    fi
    _lvmcoord_wait_for_device
    if _lvmcoord_devicesfile_enabled; then
        sudo lvmdevices --adddev "$LVMCOORD_LU_DEVICE"
    fi
}

# create_lvmcoord_vg - the PV and the VG, once, on the creating node. No
# system ID (every host uses the VG) and, where LVM supports it,
# auto-activation off in the VG metadata itself.
function create_lvmcoord_vg {
    local vgcreate_help
    local -a opts=(--systemid "")

    if _lvmcoord_vg_visible; then
        echo_summary "Reusing the shared VG $LVMCOORD_VG_NAME"
        return
    fi
    vgcreate_help=$(sudo vgcreate --help 2>&1 || true)
    if [[ "$vgcreate_help" == *--setautoactivation* ]]; then
        opts+=(--setautoactivation n)
    fi
    sudo pvcreate "$LVMCOORD_LU_DEVICE"
    sudo vgcreate "${opts[@]}" "$LVMCOORD_VG_NAME" "$LVMCOORD_LU_DEVICE"
}

# wait_for_lvmcoord_vg - every node finds the VG by name (and UUID if
# LVMCOORD_VG_UUID is set), never by device name.
function wait_for_lvmcoord_vg {
    local deadline=$((SECONDS + LVMCOORD_DEVICE_TIMEOUT))
    local uuid sysid

    until _lvmcoord_vg_visible; do
        if (( SECONDS >= deadline )); then
            die $LINENO "VG $LVMCOORD_VG_NAME not found on $LVMCOORD_LU_DEVICE." \
                "The node with LVMCOORD_SHARED_LU_CREATE=True creates it;" \
                "a VG with another host's system ID is hidden (lvmsystemid(7))."
        fi
        sleep 2
        _lvmcoord_iscsiadm_node --rescan >/dev/null
    done
    uuid=$(sudo vgs --noheadings -o vg_uuid "$LVMCOORD_VG_NAME" | tr -d '[:space:]')
    sysid=$(sudo vgs --noheadings -o systemid "$LVMCOORD_VG_NAME" | tr -d '[:space:]')
    if [[ -n "$LVMCOORD_VG_UUID" && "$uuid" != "$LVMCOORD_VG_UUID" ]]; then
        die $LINENO "VG $LVMCOORD_VG_NAME has UUID $uuid, expected $LVMCOORD_VG_UUID"
    fi
    if [[ -n "$sysid" ]]; then
        die $LINENO "VG $LVMCOORD_VG_NAME has system ID '$sysid': other hosts" \
            "cannot use it (vgchange --systemid '' $LVMCOORD_VG_NAME)"
    fi
    # Nothing of the shared VG may be active here behind lvmcoordd's back.
    sudo vgchange -an "$LVMCOORD_VG_NAME"
    echo_summary "Shared VG $LVMCOORD_VG_NAME (UUID $uuid) found on $LVMCOORD_LU_DEVICE"
}

# setup_lvmcoord_shared_lu - the post-config steps, in order.
function setup_lvmcoord_shared_lu {
    configure_lvmcoord_lvm
    if _lvmcoord_is_creator; then
        create_lvmcoord_target
    fi
    lvmcoord_iscsi_login
    if _lvmcoord_is_creator; then
        create_lvmcoord_vg
    fi
    wait_for_lvmcoord_vg
}

function _lvmcoord_delete_target {
    if sudo targetcli "/iscsi/$LVMCOORD_ISCSI_IQN" ls >/dev/null 2>&1; then
        sudo targetcli /iscsi delete "$LVMCOORD_ISCSI_IQN"
    fi
    if sudo targetcli "/backstores/fileio/$LVMCOORD_BACKSTORE_NAME" ls >/dev/null 2>&1; then
        sudo targetcli /backstores/fileio delete "$LVMCOORD_BACKSTORE_NAME"
    fi
    sudo targetcli saveconfig
}

# cleanup_lvmcoord_shared_lu - undo setup_lvmcoord_shared_lu, last step
# first. Every step tolerates "already gone": clean.sh runs it a second time.
# The creating node removes the VG (and so every volume on it), as devstack
# does for its own LVM backend.
function cleanup_lvmcoord_shared_lu {
    if [[ -e "$LVMCOORD_LU_DEVICE" ]]; then
        if _lvmcoord_vg_visible; then
            if ! sudo vgchange -an "$LVMCOORD_VG_NAME"; then
                warn $LINENO "Could not deactivate every LV of $LVMCOORD_VG_NAME"
            fi
            if _lvmcoord_is_creator; then
                if ! sudo vgremove -ff -y "$LVMCOORD_VG_NAME"; then
                    warn $LINENO "Could not remove VG $LVMCOORD_VG_NAME"
                fi
            fi
        fi
        if _lvmcoord_is_creator && sudo pvs "$LVMCOORD_LU_DEVICE" >/dev/null 2>&1; then
            sudo pvremove -ff -y "$LVMCOORD_LU_DEVICE"
        fi
        if _lvmcoord_devicesfile_enabled; then
            sudo lvmdevices --deldev "$LVMCOORD_LU_DEVICE"
        fi
    fi
    if _lvmcoord_iscsi_logged_in; then
        if ! _lvmcoord_iscsiadm_node --logout; then
            warn $LINENO "Could not log out of $LVMCOORD_ISCSI_IQN"
        fi
    fi
    if _lvmcoord_iscsiadm_node >/dev/null 2>&1; then
        _lvmcoord_iscsiadm_node -o delete
    fi
    if _lvmcoord_is_creator; then
        _lvmcoord_delete_target
        rm -f "$LVMCOORD_BACKING_FILE"
    fi
    _lvmcoord_remove_lvm_conf_block
    # stack.sh ends with set_lvm_filter, whose global_filter names the PVs
    # (ours included) by kernel name, which may differ after the next
    # login. Drop it, as devstack's own LVM backend cleanup does.
    if type -t clean_lvm_filter >/dev/null; then
        clean_lvm_filter
    fi
}


# The daemon
# ----------

function configure_lvmcoord {
    local group=${LVMCOORD_SOCKET_GROUP:-$(id -gn "$STACK_USER")}

    sudo install -d -o "$STACK_USER" -m 755 "$LVMCOORD_CONF_DIR"
    rm -f "$LVMCOORD_CONF"
    iniset "$LVMCOORD_CONF" DEFAULT host "$LVMCOORD_HOST"
    iniset "$LVMCOORD_CONF" DEFAULT cluster "$LVMCOORD_CLUSTER"
    iniset "$LVMCOORD_CONF" DEFAULT debug "${ENABLE_DEBUG_LOG_LEVEL:-True}"
    iniset "$LVMCOORD_CONF" etcd endpoints "$LVMCOORD_ETCD_ENDPOINTS"
    iniset "$LVMCOORD_CONF" session ttl "$LVMCOORD_SESSION_TTL"
    iniset "$LVMCOORD_CONF" session state_dir "$LVMCOORD_STATE_DIR"
    iniset "$LVMCOORD_CONF" lvm volume_groups "$LVMCOORD_VG_NAME"
    iniset "$LVMCOORD_CONF" lvm activation_backend "$LVMCOORD_ACTIVATION_BACKEND"
    iniset "$LVMCOORD_CONF" fence action "$LVMCOORD_FENCE_ACTION"
    if [[ -n "$LVMCOORD_WATCHDOG_DEVICE" ]]; then
        iniset "$LVMCOORD_CONF" fence watchdog_device "$LVMCOORD_WATCHDOG_DEVICE"
    else
        iniset "$LVMCOORD_CONF" fence allow_no_watchdog True
    fi
    iniset "$LVMCOORD_CONF" api socket_path "$LVMCOORD_SOCKET_PATH"
    iniset "$LVMCOORD_CONF" api socket_group "$group"
}

# start_lvmcoord - lvmcoordd runs as root (LVM, device-mapper); cinder-volume
# and nova-compute start after post-config and need its socket.
function start_lvmcoord {
    local deadline=$((SECONDS + LVMCOORD_START_TIMEOUT))

    sudo install -d -m 700 "$LVMCOORD_STATE_DIR"
    sudo install -d -m 755 "$(dirname "$LVMCOORD_SOCKET_PATH")"
    run_process lvmcoord "$LVMCOORD_BIN_DIR/lvmcoordd --config-file $LVMCOORD_CONF" "" root
    echo "Waiting for lvmcoordd to open $LVMCOORD_SOCKET_PATH"
    while [[ ! -S "$LVMCOORD_SOCKET_PATH" ]]; do
        if (( SECONDS >= deadline )); then
            die $LINENO "lvmcoordd did not start: journalctl -u devstack@lvmcoord"
        fi
        sleep 1
    done
}

function stop_lvmcoord {
    stop_process lvmcoord
}

# check_lvmcoord_host - this host sees the VG, auto-activation is off for
# it, no system ID conflict, the filter is right: fail the stack otherwise.
function check_lvmcoord_host {
    if ! sudo "$LVMCOORD_BIN_DIR/lvmcoord" --config-file "$LVMCOORD_CONF" doctor; then
        die $LINENO "lvmcoord doctor found problems on $LVMCOORD_HOST (see above)"
    fi
}

# create_lvmcoord_volume_type - devstack's create_volume_types already
# makes one per CINDER_ENABLED_BACKENDS entry; this covers the others
# (a custom LVMCOORD_VOLUME_TYPE, or the backend configured by hand).
function create_lvmcoord_volume_type {
    local -a props=(--property "volume_backend_name=$LVMCOORD_BACKEND_NAME")

    if openstack --os-region-name="$REGION_NAME" volume type show "$LVMCOORD_VOLUME_TYPE" >/dev/null 2>&1; then
        return
    fi
    if [[ "$LVMCOORD_ENABLE_MULTIATTACH" == "True" ]]; then
        props+=(--property "multiattach=<is> True")
    fi
    openstack --os-region-name="$REGION_NAME" volume type create "${props[@]}" "$LVMCOORD_VOLUME_TYPE"
}

function configure_tempest_for_lvmcoord {
    iniset "$TEMPEST_CONFIG" service_available lvmcoord True
    iniset "$TEMPEST_CONFIG" lvmcoord volume_type "$LVMCOORD_VOLUME_TYPE"
    iniset "$TEMPEST_CONFIG" lvmcoord snapshot_in_use True
    iniset "$TEMPEST_CONFIG" lvmcoord run_multinode_tests "$LVMCOORD_TEMPEST_MULTINODE"
    if [[ "$LVMCOORD_TEMPEST_MULTINODE" == "True" ]]; then
        iniset "$TEMPEST_CONFIG" compute min_compute_nodes "$LVMCOORD_TEMPEST_MIN_COMPUTE_NODES"
        iniset "$TEMPEST_CONFIG" compute-feature-enabled live_migration True
        iniset "$TEMPEST_CONFIG" compute-feature-enabled volume_backed_live_migration True
        iniset "$TEMPEST_CONFIG" compute-feature-enabled block_migration_for_live_migration \
            "$LVMCOORD_TEMPEST_BLOCK_MIGRATION"
    fi
}

# cleanup_lvmcoord - what unstack leaves: configuration, state, socket.
function cleanup_lvmcoord {
    cleanup_lvmcoord_shared_lu
    sudo rm -rf "$LVMCOORD_CONF_DIR" "$LVMCOORD_STATE_DIR"
    sudo rm -f "$LVMCOORD_SOCKET_PATH"
}


# Dispatcher
# ----------

if is_service_enabled lvmcoord; then
    if [[ "$1" == "stack" && "$2" == "pre-install" ]]; then
        echo_summary "Installing lvmcoord prerequisites"
        install_lvmcoord_packages

    elif [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "Installing lvmcoord"
        install_lvmcoord

    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        echo_summary "Setting up the shared LU and lvmcoordd"
        setup_lvmcoord_shared_lu
        configure_lvmcoord
        start_lvmcoord

    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        if [[ "$LVMCOORD_RUN_DOCTOR" == "True" ]]; then
            check_lvmcoord_host
        fi
        if _lvmcoord_is_creator && is_service_enabled c-api; then
            create_lvmcoord_volume_type
        fi

    elif [[ "$1" == "stack" && "$2" == "test-config" ]]; then
        if is_service_enabled tempest; then
            echo_summary "Configuring tempest for lvmcoord"
            configure_tempest_for_lvmcoord
        fi
    fi

    if [[ "$1" == "unstack" ]]; then
        stop_lvmcoord
        cleanup_lvmcoord_shared_lu
    fi

    if [[ "$1" == "clean" ]]; then
        cleanup_lvmcoord
    fi
fi

# Restore xtrace
$_XTRACE_LVMCOORD
