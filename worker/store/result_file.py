"""Results in a results bucket as tasks see them: a result a task writes itself, as a file in
parts (an S3 multipart upload under the key its protocol names, tagged as the protocol's other
results, visible only once complete: a reader finds the whole file or none); and an earlier
request's result read back."""

import gzip
import threading
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import zstandard
from botocore.exceptions import BotoCoreError, ClientError

from worker.settings import AwsSettings
from worker.transport.aws import error_code, mapped_errors, shared_client, transport_error

# S3 needs at least 5 MiB in every part but the last, and takes at most 10,000 parts: 16 MiB
# parts hold files up to 156 GiB.
PART_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ResultFile:
    """Where a request's result file goes, as its protocol says; travels to the Dask worker."""

    aws: AwsSettings
    bucket: str
    key: str
    tags: tuple[tuple[str, str], ...] = ()

    @contextmanager
    def writer(self, part_bytes: int = PART_BYTES) -> Iterator["PartWriter"]:
        """A writer of the file's bytes in order; the file exists once the block ends without
        an error, and never partly (an error aborts the upload)."""
        s3 = shared_client("s3", self.aws)
        with mapped_errors("s3", "CreateMultipartUpload"):
            upload_id = s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, Tagging=urllib.parse.urlencode(self.tags)
            )["UploadId"]
        writer = PartWriter(self, upload_id, part_bytes)
        try:
            yield writer
            writer.complete()
        except BaseException:
            writer.abort()
            raise


class PartWriter:
    """Buffers what is written into parts and uploads each from a thread, so the next part is
    produced while the last one travels; at most one part waits for its upload."""

    def __init__(self, file: ResultFile, upload_id: str, part_bytes: int):
        self._file = file
        self._upload_id = upload_id
        self._part_bytes = part_bytes
        self._s3 = shared_client("s3", file.aws)
        self._buffer = bytearray()
        self._parts: list[dict] = []
        self._uploading: Future | None = None
        self._uploader = ThreadPoolExecutor(1, thread_name_prefix="result-part")
        self._lock = threading.Lock()
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.bytes_written += len(data)
        if len(self._buffer) >= self._part_bytes:
            self._send(bytes(self._buffer))
            self._buffer.clear()

    def _send(self, part: bytes) -> None:
        if self._uploading is not None:
            self._uploading.result()
        number = len(self._parts) + 1
        self._parts.append({"PartNumber": number})
        self._uploading = self._uploader.submit(self._upload, number, part)

    def _upload(self, number: int, part: bytes) -> None:
        with mapped_errors("s3", "UploadPart"):
            reply = self._s3.upload_part(
                Bucket=self._file.bucket,
                Key=self._file.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=part,
            )
        with self._lock:
            self._parts[number - 1]["ETag"] = reply["ETag"]

    def complete(self) -> None:
        if self._buffer or not self._parts:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        self._uploading.result()
        self._uploader.shutdown()
        with mapped_errors("s3", "CompleteMultipartUpload"):
            self._s3.complete_multipart_upload(
                Bucket=self._file.bucket,
                Key=self._file.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )

    def abort(self) -> None:
        self._uploader.shutdown(wait=True, cancel_futures=True)
        with mapped_errors("s3", "AbortMultipartUpload"):
            self._s3.abort_multipart_upload(
                Bucket=self._file.bucket, Key=self._file.key, UploadId=self._upload_id
            )


def read_result(aws: AwsSettings, bucket: str, key: str) -> bytes | None:
    """The stored result at `bucket/key` decompressed (zstd, or gzip as the platform's older
    results), or None when there is none."""
    s3 = shared_client("s3", aws)
    try:
        stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error_code(error) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise transport_error("s3", "GetObject", error) from error
    except BotoCoreError as error:
        raise transport_error("s3", "GetObject", error) from error
    try:
        return zstandard.ZstdDecompressor().decompressobj().decompress(stored)
    except zstandard.ZstdError:
        return gzip.decompress(stored)
