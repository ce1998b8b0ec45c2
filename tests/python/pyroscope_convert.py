"""An independent re-implementation of what Grafana Pyroscope does with an OTLP profiles request
(pkg/ingester/otlp, v1.20 to HEAD, read for its rules): the series labels each profile becomes
and the pprof its converter writes, whose size Pyroscope checks against max_profile_size_bytes.
It shares no code with the profiler's own size estimate.

Usage: python3 pyroscope_convert.py PPROF_PY_DIR REQUEST.bin [REQUEST.bin ...]
PPROF_PY_DIR holds pprof_profile_pb2.py (protoc --python_out of pprof_profile.proto).
Prints one JSON object per line per profile: service, series labels, samples, converted bytes,
and its unsymbolized locations (address, mapping file, build id).
"""
import json
import sys

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)


def any_text(value):
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    return ""


def attribute(d, index):
    kv = d.attribute_table[index]
    return d.string_table[kv.key_strindex], kv.value


def attr_value(d, indices, key):
    for i in indices:
        k, v = attribute(d, i)
        if k == key:
            return any_text(v)
    return ""


class Builder:
    """One converted pprof, built sample by sample like the converter's profileBuilder."""

    def __init__(self, pb2, src, d):
        self.pb2, self.d = pb2, d
        self.p = pb2.Profile(time_nanos=src.time_unix_nano, duration_nanos=src.duration_nano, period=src.period)
        self.strings = {}
        self.add("")
        st_type = d.string_table[src.sample_type.type_strindex]
        st_unit = d.string_table[src.sample_type.unit_strindex]
        pt_type = d.string_table[src.period_type.type_strindex]
        pt_unit = d.string_table[src.period_type.unit_strindex]
        self.p.sample_type.add(type=self.add(st_type), unit=self.add(st_unit))
        self.p.period_type.type = self.add(pt_type)
        self.p.period_type.unit = self.add(pt_unit)
        self.p.default_sample_type = self.add(st_type)
        self.to_nanos = f"{st_type}:{st_unit}:{pt_type}:{pt_unit}" == "samples:count:cpu:nanoseconds"
        if self.to_nanos:
            self.p.sample_type[0].type = self.add("cpu")
            self.p.sample_type[0].unit = self.add("nanoseconds")
        self.period = src.period
        self.locations, self.functions, self.mappings, self.kernel_copies = {}, {}, {}, {}

    def add(self, s):
        if s not in self.strings:
            self.strings[s] = len(self.p.string_table)
            self.p.string_table.append(s)
        return self.strings[s]

    def function(self, index):
        if index not in self.functions:
            f = self.d.function_table[index]
            t = self.d.string_table
            self.p.function.add(
                id=len(self.p.function) + 1,
                name=self.add(t[f.name_strindex]),
                system_name=self.add(t[f.system_name_strindex]),
                filename=self.add(t[f.filename_strindex]),
                start_line=f.start_line,
            )
            self.functions[index] = len(self.p.function)
        return self.functions[index]

    def mapping(self, index, locs):
        # A new pprof mapping every time: the converter's mapping table grows per sample.
        m = self.d.mapping_table[index]
        has_lines = has_functions = has_inline = has_files = True
        for loc in locs:
            if not loc.lines:
                has_lines = has_functions = has_inline = has_files = False
                break
            for i, line in enumerate(loc.lines):
                has_functions = has_functions and line.function_index > 0
                has_lines = has_lines and line.line > 0
                has_inline = has_inline and i >= 1
                if line.function_index > 0:
                    has_files = has_files and self.d.function_table[line.function_index].filename_strindex > 0
        self.p.mapping.add(
            id=len(self.p.mapping) + 1,
            memory_start=m.memory_start,
            memory_limit=m.memory_limit,
            file_offset=m.file_offset,
            filename=self.add(self.d.string_table[m.filename_strindex]),
            build_id=self.add(attr_value(self.d, m.attribute_indices, "process.executable.build_id.gnu")),
            has_functions=has_functions,
            has_filenames=has_files,
            has_line_numbers=has_lines,
            has_inline_frames=has_inline,
        )
        self.mappings[index] = len(self.p.mapping)

    def kernel_mapping(self, mapping_id):
        if mapping_id in self.kernel_copies:
            return self.kernel_copies[mapping_id]
        orig = self.p.mapping[mapping_id - 1]
        name = self.p.string_table[orig.filename]
        if name.startswith("[kernel]"):
            return mapping_id
        copy = self.p.mapping.add()
        copy.CopyFrom(orig)
        copy.filename = self.add("[kernel] " + name if name else "[kernel]")
        copy.id = len(self.p.mapping)
        self.kernel_copies[mapping_id] = copy.id
        return copy.id

    def location(self, index):
        if index in self.locations:
            return self.locations[index]
        loc = self.d.location_table[index]
        mapping_id = self.mappings[loc.mapping_index]
        if attr_value(self.d, loc.attribute_indices, "profile.frame.type") == "kernel":
            mapping_id = self.kernel_mapping(mapping_id)
        out = self.p.location.add(id=len(self.p.location) + 1, mapping_id=mapping_id, address=loc.address)
        for line in loc.lines:
            out.line.add(function_id=self.function(line.function_index), line=line.line)
        self.locations[index] = out.id
        return out.id

    def sample(self, s):
        d = self.d
        values = list(s.values) or [len(s.timestamps_unix_nano)]
        if self.to_nanos:
            values = [v * self.period for v in values]
        out = self.p.sample.add(value=values)
        for i in s.attribute_indices:
            key, value = attribute(d, i)
            text = any_text(value)
            if key != "service.name" and text:
                out.label.add(key=self.add(key), str=self.add(text))
        stack = d.stack_table[s.stack_index].location_indices
        by_mapping = {}
        for li in stack:
            by_mapping.setdefault(d.location_table[li].mapping_index, []).append(d.location_table[li])
        for mi, locs in by_mapping.items():
            self.mapping(mi, locs)
        for li in stack:
            out.location_id.append(self.location(li))


def convert(pb2, request):
    d = request.dictionary
    for rp in request.resource_profiles:
        resource = {kv.key: any_text(kv.value) for kv in rp.resource.attributes}
        for sp in rp.scope_profiles:
            for prof in sp.profiles:
                builders = {}
                series = set()
                for s in prof.samples:
                    service = attr_value(d, s.attribute_indices, "service.name")
                    builders.setdefault(service, Builder(pb2, prof, d)).sample(s)
                    labels = dict(resource)
                    for i in s.attribute_indices:
                        key, value = attribute(d, i)
                        labels[key] = any_text(value)
                    series.add(json.dumps(sorted(labels.items())))
                unsymbolized = []
                for li in {li for s in prof.samples for li in d.stack_table[s.stack_index].location_indices}:
                    loc = d.location_table[li]
                    if not loc.lines and loc.mapping_index:
                        m = d.mapping_table[loc.mapping_index]
                        unsymbolized.append(
                            {
                                "address": loc.address,
                                "file": d.string_table[m.filename_strindex],
                                "build_id": attr_value(d, m.attribute_indices, "process.executable.build_id.gnu"),
                            }
                        )
                service = resource.get("service.name") or "unknown_service:" + resource.get("process.executable.name", "")
                yield {
                    "service": service,
                    "series": sorted(series),
                    "samples": len(prof.samples),
                    "converted_bytes": sum(b.p.ByteSize() for b in builders.values()),
                    "largest_converted_bytes": max((b.p.ByteSize() for b in builders.values()), default=0),
                    "unsymbolized": unsymbolized,
                }


def main(pprof_dir, paths):
    sys.path.insert(0, pprof_dir)
    import pprof_profile_pb2 as pb2

    for path in paths:
        request = ExportProfilesServiceRequest()
        with open(path, "rb") as f:
            request.ParseFromString(f.read())
        for profile in convert(pb2, request):
            print(json.dumps(profile))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
