# pkgs.zfs-snap (services.zfs-snap.borgmatic.package defaults to it when present).
final: prev: {
  zfs-snap = final.callPackage ./package.nix { };
}
