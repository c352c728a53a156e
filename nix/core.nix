# What the NixOS module generates, as plain data, in builtins only: the
# borgmatic settings, the unit lines, the exporter unit, the tagging unit and
# the assertions. `nix-instantiate --eval --strict` evaluates it without
# nixpkgs (.ci/nix-checks.sh does, for the seed's examples); module.nix only
# glues it to NixOS options.
#
# Unit lines are attribute sets as NixOS's `serviceConfig` takes them: a
# string is one line, a list is one line per element, in order ("" resets).
let
  inherit (builtins)
    attrNames
    concatLists
    concatStringsSep
    elem
    filter
    foldl'
    head
    isAttrs
    isBool
    isList
    isString
    listToAttrs
    map
    match
    split
    substring
    stringLength
    tail
    toString
    ;

  hasPrefix = p: s: substring 0 (stringLength p) s == p;
  optional = c: x: if c then [ x ] else [ ];
  optionalAttrs = c: a: if c then a else { };
  toList = x: if isList x then x else [ x ];
  lines = text: filter isString (split "\n" text);

  # The seed's defaults (its option table), one place for module.nix and the checks.
  defaults = {
    enable = false;
    sourceDirectories = [ ];
    repositories = [ ];
    encryption = {
      mode = "repokey-blake2";
      passphraseFile = null;
    };
    sshCommand = null;
    remotePath = null;
    retention = {
      keepDaily = 7;
      keepWeekly = 4;
      keepMonthly = 6;
      keepYearly = 1;
    };
    compression = "auto,zstd";
    excludePatterns = [ ];
    excludeCaches = true;
    oneFileSystem = false;
    archiveNameFormat = "{hostname}-{now:%Y-%m-%dT%H:%M:%S}";
    checks = [
      "repository"
      "archives"
    ];
    checkLast = 3;
    beforeBackupHooks = [ ];
    afterBackupHooks = [ ];
    onErrorHooks = [ ];
    postgresqlDatabases = [ ];
    zfs = {
      enable = false;
      datasets = [ ];
      zfsCommand = null;
      mountCommand = null;
      umountCommand = null;
    };
    extraConfig = { };
    verbosity = 0;
    prometheusExporter = {
      enable = false;
      port = 9996;
    };
  };

  # `cfg` over the defaults, one level of nesting deep (the seed's options
  # nest once: encryption, retention, zfs, prometheusExporter).
  withDefaults =
    cfg:
    defaults
    // cfg
    // listToAttrs (
      map
        (name: {
          inherit name;
          value = defaults.${name} // (cfg.${name} or { });
        })
        (
          filter (n: isAttrs defaults.${n} && n != "extraConfig") (attrNames defaults)
        )
    );

  # borg 1.x's `borg init -e` modes and borg 2's `borg repo-create -e` modes.
  encryptionModes = [
    "none"
    "authenticated"
    "authenticated-blake2"
    "repokey"
    "repokey-blake2"
    "keyfile"
    "keyfile-blake2"
    "repokey-aes-ocb"
    "repokey-chacha20-poly1305"
    "repokey-blake2-aes-ocb"
    "repokey-blake2-chacha20-poly1305"
    "keyfile-aes-ocb"
    "keyfile-chacha20-poly1305"
    "keyfile-blake2-aes-ocb"
    "keyfile-blake2-chacha20-poly1305"
  ];

  # borgmatic's check names (borgmatic 2.1 schema: `checks[].name`).
  checkNames = [
    "repository"
    "archives"
    "data"
    "extract"
    "spot"
    "disabled"
  ];

  # A ZFS dataset name as `zfs create` accepts it; also what systemd's
  # ExecStart= can carry unquoted (no space, quote, `%`, `$`, `\`).
  datasetName = name: match "[A-Za-z0-9][A-Za-z0-9_.:/-]*" name != null && match ".*//.*|.*/" name == null;

  # borgmatic's configuration (/etc/borgmatic/config.yaml) from the seed's
  # options. `link` is zfs-snap's `borg` link (borgmatic's local_path), null
  # without ZFS; `cat` runs the passphrase file.
  settings =
    {
      cfg,
      link,
      cat ? "cat",
    }:
    let
      c = withDefaults cfg;
      hooks =
        optional (c.beforeBackupHooks != [ ]) {
          before = "action";
          when = [ "create" ];
          run = c.beforeBackupHooks;
        }
        ++ optional (c.afterBackupHooks != [ ]) {
          after = "action";
          when = [ "create" ];
          run = c.afterBackupHooks;
        }
        ++ optional (c.onErrorHooks != [ ]) {
          after = "error";
          run = c.onErrorHooks;
        };
    in
    {
      source_directories = c.sourceDirectories;
      # Only `path` and `label`: nixpkgs' services.borgmatic declares no
      # other key for a repository (NixOS/nixpkgs#483610). encryption.mode
      # is checked (assertions, warnings) and is the mode to give
      # `borgmatic repo-create --encryption`.
      repositories = map (r: { inherit (r) path label; }) c.repositories;
      compression = c.compression;
      archive_name_format = c.archiveNameFormat;
      exclude_caches = c.excludeCaches;
      one_file_system = c.oneFileSystem;
      keep_daily = c.retention.keepDaily;
      keep_weekly = c.retention.keepWeekly;
      keep_monthly = c.retention.keepMonthly;
      keep_yearly = c.retention.keepYearly;
      checks = map (name: { inherit name; }) c.checks;
      check_last = c.checkLast;
      # The console's verbosity, for borgmatic run by hand; the unit logs to
      # the journal at upstream's --syslog-verbosity 1.
      verbosity = c.verbosity;
    }
    // optionalAttrs (c.excludePatterns != [ ]) { exclude_patterns = c.excludePatterns; }
    // optionalAttrs (c.sshCommand != null) { ssh_command = c.sshCommand; }
    // optionalAttrs (c.remotePath != null) { remote_path = c.remotePath; }
    // optionalAttrs (c.encryption.passphraseFile != null) {
      encryption_passcommand = "${cat} ${c.encryption.passphraseFile}";
    }
    // optionalAttrs (c.postgresqlDatabases != [ ]) { postgresql_databases = c.postgresqlDatabases; }
    // optionalAttrs (hooks != [ ]) { commands = hooks; }
    // optionalAttrs (link != null) { local_path = link; }
    // c.extraConfig;

  # zfs-snap's drop-in for borgmatic's upstream unit, line for line
  # systemd/borgmatic.service.d/zfs-snap.conf (.ci/nix-checks.sh proves it).
  borgmaticDropIn =
    {
      zfsSnap,
      borgmatic,
      systemdInhibit,
    }:
    {
      ExecStart = [
        ""
        "${zfsSnap} session --stop-timeout 270 -- ${systemdInhibit} --who=\"borgmatic\" --what=\"sleep:shutdown\" --why=\"Prevent interrupting scheduled backup\" ${borgmatic} --verbosity -2 --syslog-verbosity 1"
      ];
      KillMode = "mixed";
      TimeoutStopSec = "5min";
      PrivateDevices = "no";
      DevicePolicy = "closed";
      # Lists: they add to what upstream (and nixpkgs' borgmatic module, with
      # sudo for a database dump) set, as the drop-in's lines do.
      DeviceAllow = [ "/dev/zfs rw" ];
      CapabilityBoundingSet = [ "CAP_SYS_ADMIN" ];
      SystemCallFilter = [ "@mount" ];
    };

  # Environment of the units that run zfs-snap: the seed's zfs.*Command
  # options and the real borg behind the link.
  zfsSnapEnvironment =
    { cfg, borg }:
    let
      z = (withDefaults cfg).zfs;
    in
    optionalAttrs (borg != null) { ZFS_SNAP_BORG = borg; }
    // optionalAttrs (z.zfsCommand != null) { ZFS_SNAP_ZFS_COMMAND = z.zfsCommand; }
    // optionalAttrs (z.mountCommand != null) { ZFS_SNAP_MOUNT_COMMAND = z.mountCommand; }
    // optionalAttrs (z.umountCommand != null) { ZFS_SNAP_UMOUNT_COMMAND = z.umountCommand; };

  # systemd/zfs-snap-exporter.service, section by section.
  exporterUnit =
    { zfsSnap, port }:
    {
      Unit = {
        Description = "zfs-snap Prometheus exporter (borg and zfs-snap metrics of recorded runs)";
        After = "network.target";
      };
      Service = {
        Type = "simple";
        ExecStart = "${zfsSnap} exporter --listen 127.0.0.1:${toString port}";
        Environment = "ZFS_SNAP_STATE_DIR=/var/lib/zfs-snap";
        DynamicUser = "yes";
        Restart = "on-failure";
        RestartSec = "5s";
        MemoryMax = "64M";
        TasksMax = "8";
        LimitNOFILE = "8192";
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        NoNewPrivileges = "yes";
        LockPersonality = "true";
        MemoryDenyWriteExecute = "yes";
        PrivateDevices = "yes";
        PrivateTmp = "yes";
        ProtectClock = "yes";
        ProtectControlGroups = "yes";
        ProtectHome = "yes";
        ProtectHostname = "yes";
        ProtectKernelLogs = "yes";
        ProtectKernelModules = "yes";
        ProtectKernelTunables = "yes";
        ProtectProc = "invisible";
        ProtectSystem = "strict";
        RestrictAddressFamilies = "AF_INET AF_INET6 AF_UNIX";
        RestrictNamespaces = "yes";
        RestrictRealtime = "yes";
        RestrictSUIDSGID = "yes";
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged @resources"
        ];
        SystemCallErrorNumber = "EPERM";
        UMask = "0077";
      };
      Install = {
        WantedBy = "multi-user.target";
      };
    };

  # The seed's zfs.datasets: `zfs-snap tag` once per boot (and on each
  # change), before the backup. A failure leaves the backup to run: the
  # datasets under its source paths are still snapshotted.
  tagUnit =
    { zfsSnap, datasets }:
    {
      Unit = {
        Description = "zfs-snap: tag the ZFS datasets borgmatic backs up whole";
        After = "zfs-import.target zfs-mount.service";
        Before = "borgmatic.service";
      };
      Service = {
        Type = "oneshot";
        RemainAfterExit = "yes";
        ExecStart = "${zfsSnap} tag ${concatStringsSep " " datasets}";
      };
      Install = {
        WantedBy = "multi-user.target borgmatic.service";
      };
    };

  # The Prometheus scrape job of the seed (job `borgmatic`, which the rules name).
  scrapeConfig = port: {
    job_name = "borgmatic";
    static_configs = [ { targets = [ "localhost:${toString port}" ]; } ];
  };

  # What the module refuses, as NixOS assertions. `settings` is the final
  # services.borgmatic.settings (extraConfig and the user's own included).
  assertions =
    { cfg, settings }:
    let
      c = withDefaults cfg;
      pf = c.encryption.passphraseFile;
      badDatasets = filter (d: !(datasetName d)) c.zfs.datasets;
      badChecks = filter (n: !(elem n checkNames)) c.checks;
    in
    [
      {
        assertion = !(settings ? zfs);
        message = ''
          services.zfs-snap.borgmatic: borgmatic's own `zfs:` hook is set (extraConfig.zfs or
          services.borgmatic.settings.zfs). zfs-snap takes the snapshots (zfs.enable = true): one
          atomic snapshot per pool for the whole run, at the same paths every run. borgmatic's hook on
          top would hand borg paths inside its own snapshot mounts, which zfs-snap reads as they are,
          without the datasets mounted below them, from another moment. Remove `zfs` from the
          borgmatic settings.'';
      }
      {
        assertion = c.repositories != [ ];
        message = "services.zfs-snap.borgmatic: `repositories` is empty; borgmatic needs at least one repository to back up to.";
      }
      {
        assertion = elem c.encryption.mode encryptionModes;
        message = "services.zfs-snap.borgmatic: encryption.mode `${c.encryption.mode}` is none of borg's modes (${concatStringsSep ", " encryptionModes}).";
      }
      {
        assertion = !(c.encryption.mode == "none" && pf != null);
        message = "services.zfs-snap.borgmatic: encryption.mode is `none` but encryption.passphraseFile is set: a repository without encryption has no passphrase. Choose a mode (repokey-blake2) or drop the file.";
      }
      {
        assertion = pf == null || (hasPrefix "/" pf && !hasPrefix "/nix/store/" pf);
        message = "services.zfs-snap.borgmatic: encryption.passphraseFile must be an absolute path outside the Nix store (a secret in the store is readable by every user), e.g. config.age.secrets.borg-passphrase.path; got `${toString pf}`.";
      }
      {
        assertion = badChecks == [ ];
        message = "services.zfs-snap.borgmatic: checks ${concatStringsSep ", " badChecks}: borgmatic's checks are ${concatStringsSep ", " checkNames}.";
      }
      {
        assertion = c.verbosity >= -2 && c.verbosity <= 2;
        message = "services.zfs-snap.borgmatic: verbosity ${toString c.verbosity} is outside borgmatic's -2 .. 2.";
      }
      {
        assertion = badDatasets == [ ];
        message = "services.zfs-snap.borgmatic: zfs.datasets holds names that are not ZFS dataset names: ${concatStringsSep ", " badDatasets}.";
      }
      {
        assertion = c.zfs.datasets == [ ] || c.zfs.enable;
        message = "services.zfs-snap.borgmatic: zfs.datasets tags datasets for zfs-snap's snapshots, which need zfs.enable = true.";
      }
      {
        assertion = !c.prometheusExporter.enable || c.zfs.enable;
        message = ''
          services.zfs-snap.borgmatic: prometheusExporter serves what zfs-snap recorded of each backup,
          and backups go through zfs-snap only with zfs.enable = true (set it, or turn the exporter off).'';
      }
    ];

  warnings =
    { cfg, settings }:
    let
      c = withDefaults cfg;
    in
    optional
      (
        c.encryption.mode != "none"
        && c.encryption.passphraseFile == null
        && !(settings ? encryption_passcommand || settings ? encryption_passphrase)
      )
      "services.zfs-snap.borgmatic: encryption.mode is `${c.encryption.mode}` and no encryption.passphraseFile is set: under systemd borg has no terminal to ask for a passphrase, so unless the key has none, every backup fails. Set encryption.passphraseFile.";

  # A unit file as systemd reads it: { Section = { Key = [ value ... ]; }; },
  # comments and blank lines dropped, each key's values in file order.
  parseUnit =
    text:
    (foldl'
      (
        st: line:
        let
          section = match "[[]([A-Za-z]+)[]]" line;
          kv = match "([A-Za-z0-9]+)=(.*)" line;
        in
        if line == "" || hasPrefix "#" line || hasPrefix ";" line then
          st
        else if section != null then
          st // { current = head section; }
        else if kv != null then
          let
            key = head kv;
            sec = st.units.${st.current} or { };
          in
          st
          // {
            units = st.units // {
              ${st.current} = sec // {
                ${key} = (sec.${key} or [ ]) ++ [ (head (tail kv)) ];
              };
            };
          }
        else
          throw "parseUnit: cannot read the line `${line}`"
      )
      {
        current = "none";
        units = { };
      }
      (lines text)
    ).units;

  # NixOS's rendering of a value (systemd-lib's toOption).
  toOption =
    x:
    if isBool x then
      (if x then "true" else "false")
    else
      toString x;

  # Unit lines as values lists, as parseUnit gives them.
  normalise = section: listToAttrs (map (k: {
    name = k;
    value = map toOption (toList section.${k});
  }) (attrNames section));

  # Unit text as NixOS writes it (systemd-lib's attrsToSection: keys sorted,
  # a list one line per element).
  renderSection =
    section:
    concatStringsSep "" (
      concatLists (
        map (k: map (v: "${k}=${toOption v}\n") (toList section.${k})) (attrNames section)
      )
    );
  render =
    sections:
    concatStringsSep "\n" (
      map (s: "[${s}]\n" + renderSection sections.${s}) (
        filter (s: sections ? ${s}) [
          "Unit"
          "Service"
          "Install"
        ]
      )
    );
in
{
  inherit
    defaults
    withDefaults
    encryptionModes
    checkNames
    settings
    borgmaticDropIn
    zfsSnapEnvironment
    exporterUnit
    tagUnit
    scrapeConfig
    assertions
    warnings
    parseUnit
    normalise
    render
    renderSection
    ;
  # The paths the units name in the VM suite's systemd guest
  # (integration/tests/systemd.rs), where the repository's unit files run.
  guestPaths = {
    zfsSnap = "/usr/local/bin/zfs-snap";
    link = "/usr/local/lib/zfs-snap/borg";
    borgmatic = "/root/.local/bin/borgmatic";
    systemdInhibit = "systemd-inhibit";
  };
  failed = checks: map (a: a.message) (filter (a: !a.assertion) checks);
}
