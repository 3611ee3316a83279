"""A simulated vendor AI appliance: a DICOM node that answers studies with TID 1500 SRs.

`VendorAppliance(config).start()` runs it in-process; `lods-vendor-sim` runs it as its own
process (see `lods.vendor_sim.cli`). It stands in for the appliances the `dicom_node`
runtime talks to, in tests and demonstrations; it is not a medical device.
"""

from lods.vendor_sim.appliance import ApplianceConfig, OnnxDetector, VendorAppliance

__all__ = ["ApplianceConfig", "OnnxDetector", "VendorAppliance"]
