# hanat NAT AMI: Amazon Linux 2023 with nftables, the hanat binary, its
# systemd unit, a default config and sysctl defaults. Builds arm64 (Graviton,
# the cheapest NAT instances) and x86_64.
#
#   git archive --format=tar.gz -o /tmp/hanat-src.tar.gz HEAD
#   packer init packer/ && packer build -var region=eu-west-1 packer/

variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "src_tarball" {
  type        = string
  default     = "/tmp/hanat-src.tar.gz"
  description = "Source of hanat (git archive); built on the builder instance."
}

variable "ami_prefix" {
  type    = string
  default = "hanat"
}

locals {
  stamp = regex_replace(timestamp(), "[- TZ:]", "")
}

source "amazon-ebs" "arm64" {
  region        = var.region
  instance_type = "t4g.small"
  ssh_username  = "ec2-user"
  ami_name      = "${var.ami_prefix}-al2023-arm64-${local.stamp}"
  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-kernel-*-arm64"
      architecture        = "arm64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["amazon"]
    most_recent = true
  }
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  imds_support = "v2.0"
  tags = {
    Name = "hanat NAT (arm64)"
  }
}

source "amazon-ebs" "x86_64" {
  region        = var.region
  instance_type = "t3.small"
  ssh_username  = "ec2-user"
  ami_name      = "${var.ami_prefix}-al2023-x86_64-${local.stamp}"
  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-kernel-*-x86_64"
      architecture        = "x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["amazon"]
    most_recent = true
  }
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  imds_support = "v2.0"
  tags = {
    Name = "hanat NAT (x86_64)"
  }
}

build {
  sources = ["source.amazon-ebs.arm64", "source.amazon-ebs.x86_64"]

  provisioner "file" {
    source      = var.src_tarball
    destination = "/tmp/hanat-src.tar.gz"
  }

  provisioner "file" {
    sources = [
      "${path.root}/../systemd/hanat.service",
      "${path.root}/../systemd/hanat.toml",
      "${path.root}/../README.md",
      "${path.root}/../LICENSE-MIT",
      "${path.root}/../LICENSE-APACHE",
    ]
    destination = "/tmp/"
  }

  # The reference README links to (the unit's Documentation= names README).
  provisioner "file" {
    source      = "${path.root}/../docs"
    destination = "/tmp"
  }

  provisioner "shell" {
    script          = "${path.root}/provision.sh"
    execute_command = "sudo env {{ .Vars }} bash '{{ .Path }}'"
    environment_vars = [
      "HANAT_SRC=/tmp/hanat-src.tar.gz",
      "HANAT_FILES=/tmp",
    ]
  }
}
