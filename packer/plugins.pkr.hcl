# Kept apart from hanat.pkr.hcl: Packer 1.7+ needs this block to install the
# Amazon plugin, and Packer 1.6 (Debian's, used by CI to check the rest)
# cannot parse it.
packer {
  required_plugins {
    amazon = {
      version = ">= 1.2.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}
