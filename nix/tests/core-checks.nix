# Builtins only, no nixpkgs: what ../core.nix generates for each of the
# seed's examples, rendered with the paths of the VM suite's systemd guest,
# and whether the generated units are the repository's unit files.
#   nix-instantiate --eval --strict --json nix/tests/core-checks.nix
# .ci/nix-checks.sh reads the result: `problems` must be empty, and each
# example's `settings` goes through `borgmatic config validate`.
let
  core = import ../core.nix;
  examples = import ./examples.nix;
  guest = core.guestPaths;
  inherit (builtins)
    attrNames
    concatLists
    filter
    mapAttrs
    readFile
    stringLength
    substring
    ;

  contains =
    needle: hay:
    let
      n = stringLength needle;
      go = i: i + n <= stringLength hay && (substring i n hay == needle || go (i + 1));
    in
    go 0;

  dropIn = core.borgmaticDropIn { inherit (guest) zfsSnap borgmatic systemdInhibit; };

  # Each example as module.nix would render it, with the guest's paths.
  outputs =
    cfg:
    let
      c = core.withDefaults cfg;
      settings = core.settings {
        inherit cfg;
        link = if c.zfs.enable then guest.link else null;
      };
    in
    {
      inherit settings;
      failed = core.failed (core.assertions { inherit cfg settings; });
      warnings = core.warnings { inherit cfg settings; };
      units =
        (
          if c.zfs.enable then
            {
              "borgmatic.service.d/overrides.conf (zfs-snap's lines)" = core.renderSection dropIn;
              "borgmatic.service environment" = core.zfsSnapEnvironment {
                inherit cfg;
                borg = "/usr/bin/borg";
              };
            }
          else
            { }
        )
        // (
          if c.zfs.datasets != [ ] then
            {
              "zfs-snap-tag.service" = core.render (
                core.tagUnit {
                  inherit (guest) zfsSnap;
                  inherit (c.zfs) datasets;
                }
              );
            }
          else
            { }
        )
        // (
          if c.prometheusExporter.enable then
            {
              "zfs-snap-exporter.service" = core.render (
                core.exporterUnit {
                  inherit (guest) zfsSnap;
                  inherit (c.prometheusExporter) port;
                }
              );
              "prometheus scrape job" = core.scrapeConfig c.prometheusExporter.port;
            }
          else
            { }
        );
    };

  good = mapAttrs (_: outputs) (removeAttrs examples [ "refused" ]);

  refused = mapAttrs (
    _: r:
    let
      settings = core.settings {
        inherit (r) cfg;
        link = guest.link;
      };
      failed = core.failed (core.assertions { inherit (r) cfg; inherit settings; });
    in
    {
      inherit failed;
      ok = builtins.any (contains r.says) failed;
    }
  ) examples.refused;

  # The repository's files, as systemd reads them, against the generated
  # units with the guest's paths: the same keys, each with the same values
  # in the same order. (NixOS writes keys sorted; systemd's meaning of a
  # drop-in does not depend on the order of different keys.)
  shippedDropIn = core.parseUnit (readFile ../../systemd/borgmatic.service.d/zfs-snap.conf);
  shippedExporter = core.parseUnit (readFile ../../systemd/zfs-snap-exporter.service);
  generatedExporter = mapAttrs (_: core.normalise) (
    core.exporterUnit {
      inherit (guest) zfsSnap;
      port = core.defaults.prometheusExporter.port;
    }
  );
  mirror = {
    "systemd/borgmatic.service.d/zfs-snap.conf" = {
      same = shippedDropIn == { Service = core.normalise dropIn; };
      generated = core.renderSection (core.normalise dropIn);
      shipped = core.renderSection (shippedDropIn.Service or { });
    };
    "systemd/zfs-snap-exporter.service" = {
      same = shippedExporter == generatedExporter;
      generated = core.render generatedExporter;
      shipped = core.render shippedExporter;
    };
  };

  expect = what: ok: if ok then [ ] else [ what ];
  zfsAdvanced = good.zfsAdvanced;
  problems = concatLists (
    map (n: map (m: "example ${n}: refused: ${m}") good.${n}.failed) (attrNames good)
    ++ map (
      n: expect "refused example ${n}: no assertion says `${examples.refused.${n}.says}` (got: ${builtins.toJSON refused.${n}.failed})" refused.${n}.ok
    ) (attrNames refused)
    ++ map (n: expect "${n}: the generated unit differs from the file (see mirror)" mirror.${n}.same) (
      attrNames mirror
    )
    ++ [
      (expect "zfsAdvanced: the tagging unit's ExecStart" (
        contains "ExecStart=/usr/local/bin/zfs-snap tag rpool/local/lib rpool/safe/home\n"
          zfsAdvanced.units."zfs-snap-tag.service"
      ))
      (expect "zfsAdvanced: zfs.*Command in the unit's environment" (
        zfsAdvanced.units."borgmatic.service environment" == {
          ZFS_SNAP_BORG = "/usr/bin/borg";
          ZFS_SNAP_ZFS_COMMAND = "/usr/local/bin/zfs";
          ZFS_SNAP_MOUNT_COMMAND = "/usr/local/bin/mount";
          ZFS_SNAP_UMOUNT_COMMAND = "/usr/local/bin/umount";
        }
      ))
      (expect "basic: no zfs-snap without zfs.enable" (
        !(good.basic.settings ? local_path) && good.basic.units == { }
      ))
      (expect "zfs: local_path is the link" (good.zfs.settings.local_path == guest.link))
      (expect "basic: the passphrase file by encryption_passcommand" (
        good.basic.settings.encryption_passcommand == "cat /run/agenix/borg-passphrase"
      ))
      (expect "basic: a repository has only path and label (all nixpkgs' services.borgmatic declares)" (
        builtins.all (r: builtins.attrNames r == [
          "label"
          "path"
        ]) good.basic.settings.repositories
      ))
      (expect "hooks: the seed's hooks as borgmatic 2's commands" (
        map (h: h.before or h.after) good.hooks.settings.commands == [
          "action"
          "action"
          "error"
        ]
      ))
    ]
  );
in
{
  examples = good;
  inherit refused mirror problems;
}
