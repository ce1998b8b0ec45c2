"""Independent check of the wire format: decode an ExportProfilesServiceRequest with the official
OpenTelemetry Python bindings (opentelemetry-proto >= 1.43, proto v1.10) and print a JSON summary.

Usage: python3 decode_otlp.py REQUEST.bin
"""
import json
import sys

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)


def main(path):
    req = ExportProfilesServiceRequest()
    with open(path, "rb") as f:
        req.ParseFromString(f.read())
    d = req.dictionary
    strings = list(d.string_table)
    resources = []
    for rp in req.resource_profiles:
        attrs = {kv.key: (kv.value.string_value or kv.value.int_value) for kv in rp.resource.attributes}
        samples = 0
        functions = set()
        for sp in rp.scope_profiles:
            for p in sp.profiles:
                sample_type = (strings[p.sample_type.type_strindex], strings[p.sample_type.unit_strindex])
                period_type = (strings[p.period_type.type_strindex], strings[p.period_type.unit_strindex])
                for s in p.samples:
                    samples += s.values[0]
                    for li in d.stack_table[s.stack_index].location_indices:
                        for line in d.location_table[li].lines:
                            functions.add(strings[d.function_table[line.function_index].name_strindex])
        resources.append(
            {
                "attributes": attrs,
                "samples": samples,
                "functions": sorted(functions),
                "sample_type": sample_type,
                "period_type": period_type,
                "period": p.period,
            }
        )
    zero_values = {
        "string": strings[0] == "",
        "mapping": d.mapping_table[0].ByteSize() == 0,
        "location": d.location_table[0].ByteSize() == 0,
        "function": d.function_table[0].ByteSize() == 0,
        "stack": d.stack_table[0].ByteSize() == 0,
        "attribute": d.attribute_table[0].ByteSize() == 0,
    }
    print(
        json.dumps(
            {
                "resources": resources,
                "zero_values": zero_values,
                "zero_values_ok": all(zero_values.values()),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
