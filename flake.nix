{
  description = "zfs-snap: consistent borg backups of ZFS hosts, and a NixOS module for borgmatic";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
    in
    {
      packages.${system} = {
        zfs-snap = pkgs.callPackage ./nix/package.nix { };
        default = self.packages.${system}.zfs-snap;
      };

      overlays.default = import ./nix/overlay.nix;

      # services.zfs-snap.borgmatic; its package is built with the system's own
      # nixpkgs (pkgs.zfs-snap if the overlay is applied).
      nixosModules.default = import ./nix/module.nix;
      nixosModules.zfs-snap = self.nixosModules.default;
    };
}
